"""POST /v1/predict over real HTTP: equality with the Predictor, batching, bad input."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from model_store.bundle import load_bundle
from model_store.predictor import SERVING_THREADS, Predictor, torch_threads
from tests.utils.factories import image_bytes, png_bomb
from tests.utils.server import LiveServer

pytestmark = pytest.mark.slow  # real servers / subprocesses


@pytest.fixture
def predictor(bundles, keys) -> Iterator[Predictor]:
    """In process, single-threaded like the service's workers: results compare bit for bit."""
    with torch_threads(SERVING_THREADS):
        yield Predictor(load_bundle(bundles["v1"], keys[1]))


def test_single_image_equals_the_predictor_bitwise(server: LiveServer, predictor: Predictor) -> None:
    for seed in range(5):
        img = image_bytes(seed, (120 + seed, 90))
        r = httpx.post(f"{server.url}/v1/predict", content=img, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        body = r.json()
        [expected] = predictor.predict([img])
        [result] = body["results"]
        assert result["probability"] == expected.probability  # bitwise: same float
        assert result["decision"] == expected.decision
        assert result["threshold"] == predictor.threshold
        assert body["model"] == {
            "name": "parcel-damage",
            "version": "v1",
            "manifest_sha256": predictor.bundle.manifest_sha256,
        }
        assert body["request_id"] == r.headers["x-request-id"]


def test_multipart_images_equal_the_predictor_in_order(server: LiveServer, predictor: Predictor) -> None:
    images = [image_bytes(10 + i, (100, 80 + i), fmt) for i, fmt in enumerate(["JPEG", "PNG", "WEBP", "JPEG"])]
    files = [("files", (f"p{i}.img", data, "application/octet-stream")) for i, data in enumerate(images)]
    r = httpx.post(f"{server.url}/v1/predict", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    # The images are shared among the idle workers, so they run in smaller batches than one
    # in-process call would use: equal up to the last digits (the bundle's tolerance bounds it).
    expected = [predictor.predict([img])[0] for img in images]
    tolerance = predictor.manifest.parity.tolerance
    assert [x["probability"] for x in results] == pytest.approx([e.probability for e in expected], abs=tolerance)
    assert [x["decision"] for x in results] == [e.decision for e in expected]
    assert [x["filename"] for x in results] == [f"files[{i}] (p{i}.img)" for i in range(4)]


def test_concurrent_clients_are_micro_batched(server: LiveServer, predictor: Predictor) -> None:
    images = [image_bytes(40 + i) for i in range(24)]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(
                *[client.post("/v1/predict", content=img, headers={"Content-Type": "image/jpeg"}) for img in images]
            )

    responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses)
    # Batched with strangers, an image may differ from its single-image result in the last
    # digits (CPU kernels are chosen per batch size); the bundle's parity tolerance bounds it.
    tolerance = predictor.manifest.parity.tolerance
    for img, r in zip(images, responses, strict=True):
        [expected] = predictor.predict([img])
        assert r.json()["results"][0]["probability"] == pytest.approx(expected.probability, abs=tolerance)
    metrics = httpx.get(f"{server.url}/metrics").text
    forward_passes = _metric(metrics, "batch_size_images_count")
    # Batches formed across clients: far fewer forward passes than requests.
    assert forward_passes <= len(images) / 2, f"{forward_passes} forward passes for {len(images)} requests"


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buf, format="GIF")
    return buf.getvalue()


JPEG = image_bytes(1, (200, 150))


@pytest.mark.parametrize(
    ("content", "ctype", "status", "code"),
    [
        (b"hello", "text/plain", 415, "unsupported_media_type"),
        (b'{"image": "x"}', "application/json", 415, "unsupported_media_type"),
        (b"definitely not an image", "image/jpeg", 422, "not_an_image"),
        (JPEG[: len(JPEG) // 2], "image/jpeg", 422, "truncated_image"),
        (_gif(), "image/gif", 422, "unsupported_image_format"),
        (png_bomb(60_000, 60_000), "image/png", 422, "too_many_pixels"),
        (b"", "image/jpeg", 422, "not_an_image"),
        (b"x" * 300_000, "image/jpeg", 413, "payload_too_large"),
    ],
)
def test_bad_input_gets_a_clear_4xx(store, keys, content: bytes, ctype: str, status: int, code: str) -> None:
    with LiveServer(store.root, keys[1], max_image_bytes=200_000) as srv:
        srv.wait_ready()
        r = httpx.post(f"{srv.url}/v1/predict", content=content, headers={"Content-Type": ctype})
        assert r.status_code == status, r.text
        body = r.json()
        assert body["error"] == code and body["message"]
        assert httpx.get(f"{srv.url}/healthz").status_code == 200
        ok = httpx.post(f"{srv.url}/v1/predict", content=JPEG, headers={"Content-Type": "image/jpeg"})
        assert ok.status_code == 200  # the process is fine


def test_multipart_errors(server: LiveServer) -> None:
    url = f"{server.url}/v1/predict"
    r = httpx.post(url, data={"note": "x"}, files=[("other", ("a.jpg", JPEG, "image/jpeg"))])
    assert (r.status_code, r.json()["error"]) == (422, "no_images")
    too_many = [("files", (f"{i}.jpg", JPEG, "image/jpeg")) for i in range(server.settings.max_images_per_request + 1)]
    r = httpx.post(url, files=too_many)
    assert (r.status_code, r.json()["error"]) == (413, "too_many_images")
    r = httpx.post(
        url, files=[("files", ("good.jpg", JPEG, "image/jpeg")), ("files", ("bad.jpg", b"xx", "image/jpeg"))]
    )
    assert r.status_code == 422
    assert r.json()["error"] == "not_an_image" and "files[1] (bad.jpg)" in r.json()["message"]


def test_overload_answers_503_with_retry_after(store, keys) -> None:
    with LiveServer(store.root, keys[1], queue_bound=4, max_images_per_request=4, max_batch=2, workers=1) as srv:
        srv.wait_ready()

        async def fire() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as client:
                return await asyncio.gather(
                    *[
                        client.post("/v1/predict", content=JPEG, headers={"Content-Type": "image/jpeg"})
                        for _ in range(60)
                    ]
                )

        responses = asyncio.run(fire())
        statuses = {r.status_code for r in responses}
        assert statuses <= {200, 503}
        shed = [r for r in responses if r.status_code == 503]
        assert shed and len(shed) < len(responses)
        assert all(r.headers["retry-after"] == "1" and r.json()["error"] == "overloaded" for r in shed)
