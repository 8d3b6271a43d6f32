"""The Open Inference Protocol v2, driven by the real `tritonclient[http]` (its sync client on
geventhttpclient, its asyncio client on aiohttp) against a real server and real inference
workers: what KServe, a station or anything with a Triton client would do, with no code of ours."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from model_store import activation
from model_store.store import FilesystemStore
from tests.utils.factories import image_bytes
from tests.utils.server import ADMIN_TOKEN, LiveServer, admin
from tests.utils.waiting import eventually

pytestmark = pytest.mark.slow  # a real server with real workers

IMAGES = [image_bytes(1, (120, 90)), image_bytes(2, (90, 120), fmt="PNG"), image_bytes(3, (200, 64))]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keys, bundles) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("oip")
    store = FilesystemStore(root / "store", keys[1])
    store.import_bundle(bundles["v1"], actor="fixture")
    activation.activate(store, "v1", actor="fixture")
    capture = {"capture_fraction": 1.0, "capture_location": str(root / "capture")}
    with LiveServer(store.root, keys[1], admin_token=ADMIN_TOKEN, workers=1, **capture) as srv:
        srv.wait_ready()
        yield srv


@pytest.fixture(scope="module")
def model(server: LiveServer) -> str:
    name: str = httpx.get(f"{server.url}/v1/models/v1", headers=admin()).json()["name"]
    return name


def _inputs(images: list[bytes]) -> list[triton.InferInput]:
    image = triton.InferInput("image", [len(images)], "BYTES")
    image.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    return [image]


def _v1(server: LiveServer, images: list[bytes]) -> list[dict[str, object]]:
    r = httpx.post(f"{server.url}/v1/predict", files=[("files", (str(i), b)) for i, b in enumerate(images)])
    results: list[dict[str, object]] = r.json()["results"]
    return results


def test_health_and_metadata_with_the_sync_client(server: LiveServer, model: str) -> None:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(model) and client.is_model_ready(model, "v1")
        assert not client.is_model_ready(model, "v9")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        meta = client.get_model_metadata(model)
        assert meta["versions"] == ["v1"]
        assert [o["name"] for o in meta["outputs"]] == ["probability", "decision", "reason"]
        with pytest.raises(InferenceServerException, match=r"version_not_found: .*'v1'"):
            client.get_model_metadata(model, "v9")
    finally:
        client.close()


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary-outputs", "json-outputs"])
def test_a_batch_scores_as_v1_with_the_sync_client(
    server: LiveServer, model: str, binary: bool, compression: str | None
) -> None:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("probability", "decision")]
        result = client.infer(
            model,
            _inputs(IMAGES),
            outputs=outputs,
            request_id="station-7/42",
            request_compression_algorithm=compression,
            headers={"X-Station-ID": "dock-oip"},
        )
    finally:
        client.close()
    v1 = _v1(server, IMAGES)
    probability = result.as_numpy("probability")
    assert probability.dtype == np.float32 and probability.shape == (3,)
    assert probability.tolist() == pytest.approx([r["probability"] for r in v1], abs=1e-6)
    assert [d.decode() if isinstance(d, bytes) else d for d in result.as_numpy("decision")] == [
        r["decision"] for r in v1
    ]
    answer = result.get_response()
    assert answer["id"] == "station-7/42" and answer["model_version"] == "v1"
    params = answer["parameters"]
    assert params["version"] == "v1" and re.fullmatch(r"[0-9a-f]{64}", params["manifest_sha256"])
    assert 0 < params["threshold"] < 1 and params["request_id"]


def test_the_asyncio_client_and_an_error(server: LiveServer, model: str) -> None:
    async def run() -> tuple[np.ndarray, str]:
        client = triton_aio.InferenceServerClient(server.url.removeprefix("http://"))
        try:
            assert await client.is_server_ready() and await client.is_model_ready(model)
            result = await client.infer(model, _inputs(IMAGES[:2]), model_version="v1")
            with pytest.raises(InferenceServerException) as refused:
                await client.infer(model, _inputs([b"not an image", IMAGES[0]]))
            return result.as_numpy("probability"), str(refused.value)
        finally:
            await client.close()

    probability, error = asyncio.run(run())
    assert probability.tolist() == pytest.approx([r["probability"] for r in _v1(server, IMAGES[:2])], abs=1e-6)
    assert "not_an_image" in error and "image[0]" in error, error


def test_the_same_metrics_and_drift_windows_as_v1(server: LiveServer, model: str) -> None:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        client.infer(model, _inputs(IMAGES), headers={"X-Station-ID": "dock-metrics"})
    finally:
        client.close()
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'http_requests_total{method="POST",route="/v2/models/{model}/infer",status="200"}' in metrics
    monitoring = httpx.get(f"{server.url}/v1/monitoring", headers=admin()).json()
    assert "dock-metrics" in str(monitoring), monitoring


def test_a_v2_request_is_captured_and_labelled_by_its_request_id(server: LiveServer, model: str) -> None:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        result = client.infer(model, _inputs(IMAGES[:2]), headers={"X-Station-ID": "dock-capture"})
    finally:
        client.close()
    request_id = result.get_response()["parameters"]["request_id"]
    capture = server.app.state.service.capture
    eventually(lambda: capture.written >= 1, what="the capture written")
    labels = {"request_id": request_id, "labels": ["damaged", "intact"]}
    r = httpx.post(f"{server.url}/v1/feedback", json=labels, headers={**admin(), "X-Station-ID": "dock-capture"})
    assert r.status_code == 201, r.text


def test_the_readmes_tritonclient_snippet_runs_as_pasted(server: LiveServer, model: str, tmp_path: Path) -> None:
    """The README's /v2 example, against this server instead of `make demo`'s (the test
    bundles are named as the demo's, parcel-damage) and with the demo's image paths."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("**The Open Inference Protocol v2**") :]
    [snippet] = re.findall(r"```python\n(.*?)```", section, re.S)[:1]
    assert model in snippet and "127.0.0.1:8000" in snippet
    for i, path in enumerate(re.findall(r'"(demo/data/[^"]+)"', snippet)):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(IMAGES[i])
    code = snippet.replace("127.0.0.1:8000", server.url.removeprefix("http://"))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "manifest_sha256" in result.stdout and "b'" in result.stdout, result.stdout


def test_a_predict_path_the_router_matches_with_a_final_newline_is_served_not_a_500(
    server: LiveServer, model: str
) -> None:
    """The router's patterns match before a final newline (`/infer%0A`), the predict doors'
    pattern does not: such a request still reaches the door's handler, in its own shape."""
    r = httpx.post(f"{server.url}/v2/models/{model}/infer%0A", content=b"{}", timeout=30)
    assert r.status_code == 400 and isinstance(r.json()["error"], str), r.text  # the protocol's shape
    r = httpx.post(f"{server.url}/v1/predict%0A", content=IMAGES[0], headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert r.status_code == 200 and r.json()["results"][0]["decision"] in ("intact", "damaged", "retake"), r.text
