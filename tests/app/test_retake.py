"""Images the model should not judge, over real HTTP: a bundle with validated ranges answers
`retake` with the reason for a black, blank, blurred or cut frame, on `/v1` and `/v2`, counts it
in `/metrics` and in the station's monitoring window, and still judges ordinary photos."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image, ImageFilter

from model_store import activation
from model_store.bundle import load_bundle
from model_store.domain import RETAKE
from model_store.receipts import ReceiptKeys, verify
from model_store.replay import Replayer
from model_store.signing import generate_keypair
from model_store.store import FilesystemStore
from tests.utils.factories import make_monitored_bundle, parcel_photo
from tests.utils.server import ADMIN_TOKEN, LiveServer, admin

pytestmark = pytest.mark.slow  # a real server with real workers


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


BLACK = _jpeg(Image.new("RGB", (160, 120)))
BLANK = _jpeg(Image.new("RGB", (160, 120), (200, 200, 200)))
BLURRED = _jpeg(Image.open(io.BytesIO(parcel_photo(7))).filter(ImageFilter.GaussianBlur(4)))
STRIP = _jpeg(Image.new("RGB", (4000, 40)))  # the black 4000x40 frame that was answered "damaged", p=1.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, keys) -> Path:
    reference = [parcel_photo(seed) for seed in range(120)]
    return make_monitored_bundle(tmp_path_factory.mktemp("retake") / "r1", keys[0], "r1", reference, retake=True).path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, keys, bundle: Path) -> FilesystemStore:
    store = FilesystemStore(tmp_path_factory.mktemp("retake-store") / "store", keys[1])
    store.import_bundle(bundle, actor="fixture")
    activation.activate(store, "r1", actor="fixture")  # parity first: its references are judged
    return store


@pytest.fixture(scope="module")
def receipt_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("retake-receipt-keys"))


@pytest.fixture(scope="module")
def server(store: FilesystemStore, keys, receipt_keys) -> Iterator[LiveServer]:
    with LiveServer(store.root, keys[1], admin_token=ADMIN_TOKEN, workers=1, receipt_key=receipt_keys[0]) as srv:
        srv.wait_ready()
        yield srv


def _predict(server: LiveServer, images: list[bytes], station: str) -> list[dict[str, Any]]:
    files = [("files", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(images)]
    r = httpx.post(f"{server.url}/v1/predict", files=files, headers={"X-Station-ID": station}, timeout=60)
    assert r.status_code == 200, r.text
    results: list[dict[str, Any]] = r.json()["results"]
    return results


def test_off_domain_frames_get_retake_and_photos_a_verdict(server: LiveServer, keys, bundle: Path) -> None:
    photos = [parcel_photo(1000 + i) for i in range(4)]
    results = _predict(server, [BLACK, BLANK, BLURRED, STRIP, *photos], "dock-r")
    reasons = [r.get("reason") for r in results]
    assert [r["decision"] for r in results[:4]] == [RETAKE] * 4, reasons
    assert "too dark" in str(reasons[0]) and "contrast" in str(reasons[1]) and "blurred" in str(reasons[2])
    assert "too dark" in str(reasons[3])
    decision = load_bundle(bundle, keys[1]).manifest.decision
    for r in results[4:]:  # judged as the bundle's rule says, with no reason
        assert r["decision"] == decision.decide(float(r["probability"])) and "reason" not in r
    # A probability is still given (for audit), but a station acts on the decision.
    assert all(isinstance(r["probability"], float) for r in results)

    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'predicted_images_total{decision="retake"} 4.0' in metrics
    assert 'retake_images_total{feature="brightness"} 2.0' in metrics
    stations = httpx.get(f"{server.url}/v1/monitoring", headers=admin()).json()["stations"]
    dock = next(s for s in stations if s["station"] == "dock-r")
    assert dock["retake_rate"] == pytest.approx(4 / 8)


def test_the_open_inference_protocol_carries_the_retake_and_its_reason(server: LiveServer) -> None:
    model = httpx.get(f"{server.url}/v1/models/r1", headers=admin()).json()["name"]
    image = triton.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(np.array([BLACK, parcel_photo(1001)], dtype=np.object_), binary_data=True)
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        result = client.infer(model, [image])
    finally:
        client.close()
    decisions = [d.decode() if isinstance(d, bytes) else d for d in result.as_numpy("decision")]
    reasons = [d.decode() if isinstance(d, bytes) else d for d in result.as_numpy("reason")]
    assert decisions[0] == RETAKE and "too dark" in reasons[0]
    assert decisions[1] != RETAKE and reasons[1] == ""


def test_a_retake_is_signed_with_its_reason_and_replays(
    server: LiveServer, store: FilesystemStore, receipt_keys
) -> None:
    """A claims desk replays a retake as it replays a verdict: the same check, the same answer."""
    photo = parcel_photo(1002)
    results = _predict(server, [BLURRED, photo], "dock-claims")
    keys = ReceiptKeys.load(receipt_keys[1])
    replayer = Replayer(store)
    for image, result in zip([BLURRED, photo], results, strict=True):
        receipt = verify(result["receipt"], keys)
        assert (receipt.decision, receipt.reason) == (result["decision"], result.get("reason"))
        replayed = replayer.replay(receipt, image)
        assert (replayed.probability, replayed.decision) == (result["probability"], result["decision"])
    assert results[0]["decision"] == RETAKE and results[1]["decision"] != RETAKE


def test_explain_gives_predicts_retake_for_a_frame_it_should_not_judge(server: LiveServer) -> None:
    r = httpx.post(f"{server.url}/v1/explain", content=BLACK, headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision"] == RETAKE and "too dark" in body["reason"]
    [predicted] = _predict(server, [BLACK], "dock-explain")
    assert (body["probability"], body["decision"], body["reason"]) == (
        predicted["probability"],
        predicted["decision"],
        predicted["reason"],
    )
