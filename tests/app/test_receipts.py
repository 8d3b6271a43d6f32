"""Decision receipts over real HTTP, real inference workers and real keys (issue 21 §2): every
image of a /v1 and /v2 answer carries a receipt that verifies with the key the service
serves, states exactly the served values, and replays bit for bit from the store; the
claims desk's commands work as typed; a changed byte anywhere is refused in one line."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from app.ops.drift import UNASSIGNED
from model_store.capture import open_capture
from model_store.receipts import ReceiptError, ReceiptKeys, verify
from model_store.replay import Replayer
from model_store.signing import generate_keypair
from model_store.store import FilesystemStore
from tests.utils.factories import image_bytes, parcel_photo
from tests.utils.server import LiveServer
from tests.utils.waiting import eventually

pytestmark = pytest.mark.slow  # a real server with real workers


@pytest.fixture(scope="module")
def receipt_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The service's own receipt key pair (not the bundle signer's)."""
    return generate_keypair(tmp_path_factory.mktemp("receipt-keys"))


@pytest.fixture
def served(store: FilesystemStore, keys, receipt_keys, tmp_path: Path) -> Iterator[LiveServer]:
    capture = {"capture_fraction": 1.0, "capture_location": str(tmp_path / "capture")}
    with LiveServer(store.root, keys[1], receipt_key=receipt_keys[0], **capture) as srv:
        srv.wait_ready()
        yield srv


def _public(srv: LiveServer, tmp_path: Path) -> Path:
    """The key as a claims desk gets it: GET /v1/receipts/keys, saved to a file."""
    r = httpx.get(f"{srv.url}/v1/receipts/keys")
    assert r.status_code == 200, r.text
    path = tmp_path / "receipt-keys.json"
    path.write_bytes(r.content)
    return path


def _post(client: httpx.AsyncClient, images: list[bytes]) -> asyncio.Future[httpx.Response]:
    if len(images) == 1:
        coro = client.post("/v1/predict", content=images[0], headers={"Content-Type": "image/jpeg"})
    else:
        coro = client.post("/v1/predict", files=[("files", (f"{i}.jpg", data)) for i, data in enumerate(images)])
    return asyncio.ensure_future(coro)


def test_a_hundred_served_images_replay_bit_for_bit_from_their_receipts(
    served: LiveServer, store: FilesystemStore, tmp_path: Path
) -> None:
    # 40 single-image requests and 10 of 6 images, all at once: the workers batch them with
    # strangers, so receipts name batches of several images and rows other than the first.
    images = [parcel_photo(i) if i % 2 else image_bytes(i, (100 + i, 90)) for i in range(100)]
    groups = [images[i : i + 1] for i in range(40)] + [images[i : i + 6] for i in range(40, 100, 6)]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
            return await asyncio.gather(*[_post(client, g) for g in groups])

    responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    keys = ReceiptKeys.load(_public(served, tmp_path))
    replayer = Replayer(store)  # one Predictor load for all of them
    batches: set[tuple[int, int]] = set()
    for group, r in zip(groups, responses, strict=True):
        body = r.json()
        for image, result in zip(group, body["results"], strict=True):
            receipt = verify(result["receipt"], keys)
            assert receipt.image_sha256 == hashlib.sha256(image).hexdigest()
            assert receipt.probability.hex() == result["probability"].hex()  # the served float, exactly
            assert (receipt.decision, receipt.threshold) == (result["decision"], result["threshold"])
            assert receipt.model.model_dump() == body["model"] and receipt.request_id == body["request_id"]
            assert receipt.index == result["index"] and receipt.station == UNASSIGNED
            replayed = replayer.replay(receipt, image)
            assert replayed.probability.hex() == result["probability"].hex()
            assert receipt.runtime.batch is not None and receipt.runtime.row is not None  # the workers say
            batches.add((receipt.runtime.batch, receipt.runtime.row))
    # Replay reproduced images computed in batches of several, at rows other than 0.
    assert max(b for b, _ in batches) > 1 and max(r for _, r in batches) > 0, batches


def test_v2_answers_carry_a_receipt_output_with_the_served_fp32_value(
    served: LiveServer, store: FilesystemStore, tmp_path: Path
) -> None:
    images = [image_bytes(1, (120, 90)), image_bytes(2, (90, 120), fmt="PNG")]
    model = httpx.get(f"{served.url}/v2/models/parcel-damage").json()
    assert [o["name"] for o in model["outputs"]] == ["probability", "decision", "reason", "receipt"]
    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    try:
        inputs = triton.InferInput("image", [len(images)], "BYTES")
        inputs.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
        result = client.infer("parcel-damage", [inputs], headers={"X-Station-ID": "dock-v2"})
        asked = [triton.InferRequestedOutput(n) for n in ("probability", "decision")]
        without = client.infer("parcel-damage", [inputs], outputs=asked)
    finally:
        client.close()
    keys = ReceiptKeys.load(_public(served, tmp_path))
    probabilities = result.as_numpy("probability")
    receipts = [verify(r.decode(), keys) for r in result.as_numpy("receipt")]
    replayer = Replayer(store)
    for image, fp32, receipt in zip(images, probabilities, receipts, strict=True):
        assert np.float32(receipt.probability) == fp32 and float(fp32) == receipt.probability  # no rounding either way
        assert receipt.station == "dock-v2"
        assert receipt.request_id == result.get_response()["parameters"]["request_id"]
        assert replayer.replay(receipt, image).probability == receipt.probability
    assert without.as_numpy("receipt") is None  # not asked for: not signed


def test_receipts_are_off_unless_a_key_is_set(server: LiveServer) -> None:
    r = httpx.post(f"{server.url}/v1/predict", content=image_bytes(3), headers={"Content-Type": "image/jpeg"})
    assert "receipt" not in r.json()["results"][0]
    keys = httpx.get(f"{server.url}/v1/receipts/keys")
    assert keys.status_code == 404 and keys.json()["error"] == "receipts_off"
    outputs = httpx.get(f"{server.url}/v2/models/parcel-damage").json()["outputs"]
    assert [o["name"] for o in outputs] == ["probability", "decision", "reason"]


def test_the_captured_photo_is_found_by_the_receipts_sha256(served: LiveServer, tmp_path: Path) -> None:
    photo = parcel_photo(7)
    body = httpx.post(f"{served.url}/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"}).json()
    receipt = verify(body["results"][0]["receipt"], ReceiptKeys.load(_public(served, tmp_path)))
    capture = open_capture(tmp_path / "capture")
    found = eventually(lambda: capture.find(receipt.image_sha256), what="the capture written")
    [hit] = found
    assert hit.request_id == receipt.request_id
    assert capture.image(hit.request_id, hit.file) == photo


def _cli(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model_store", "receipt", *map(str, args)],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
        check=False,
    )


def _refused(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and reason in line, line


def test_the_claims_desk_commands_verify_replay_and_refuse_a_changed_byte_in_one_line(
    served: LiveServer, store: FilesystemStore, keys, tmp_path: Path
) -> None:
    photo = parcel_photo(3)
    body = httpx.post(f"{served.url}/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"}).json()
    token = body["results"][0]["receipt"]
    (tmp_path / "receipt.jws").write_text(token)
    (tmp_path / "photo.jpg").write_bytes(photo)
    public = _public(served, tmp_path)
    bundle_key = ["--store", store.root, "--public-key", keys[1]]

    ok = _cli("verify", tmp_path / "receipt.jws", "--receipt-key", public)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: verified: "), ok.stderr
    assert body["results"][0]["decision"] in ok.stdout and body["request_id"] in ok.stdout
    replayed = _cli("replay", tmp_path / "receipt.jws", tmp_path / "photo.jpg", "--receipt-key", public, *bundle_key)
    assert replayed.returncode == 0 and replayed.stdout.startswith("OK: replayed bit for bit"), replayed.stderr
    # The photo taken from the capture, by the receipt's sha256; the receipt from stdin.
    eventually(lambda: open_capture(tmp_path / "capture").find(hashlib.sha256(photo).hexdigest()), what="capture")
    from_capture = _cli("replay", "-", "--capture", tmp_path / "capture", "--receipt-key", public, *bundle_key,
                        stdin=token)  # fmt: skip
    assert from_capture.returncode == 0 and body["request_id"] in from_capture.stdout, from_capture.stderr
    found = _cli("find", tmp_path / "receipt.jws", "--capture", tmp_path / "capture", "--receipt-key", public,
                 "--out", tmp_path / "found.jpg")  # fmt: skip
    assert found.returncode == 0 and (tmp_path / "found.jpg").read_bytes() == photo, found.stderr

    # A changed byte in the receipt: in its header, its payload (the probability's digits) and its signature.
    header, payload, signature = token.split(".")
    claims = json.loads(_b64decode(payload))
    claims["probability"] = claims["probability"] / 2
    forged = f"{header}.{_b64encode(json.dumps(claims).encode())}.{signature}"
    flipped = {
        "header": f"{_flip(header, 10)}.{payload}.{signature}",
        "payload": forged,
        "signature": f"{header}.{payload}.{_flip(signature, 20)}",
    }
    for where, bad in flipped.items():
        result = _cli("verify", bad, "--receipt-key", public)
        _refused(result, "altered" if where != "header" else "receipt")
    # A changed byte in the image.
    changed = bytearray(photo)
    changed[len(changed) // 2] ^= 1
    (tmp_path / "changed.jpg").write_bytes(bytes(changed))
    _refused(
        _cli("replay", token, tmp_path / "changed.jpg", "--receipt-key", public, *bundle_key),
        "the image is not the one the receipt is for",
    )
    # Another key: a receipt checked against a key that did not sign it.
    _, other = generate_keypair(tmp_path / "other")
    _refused(_cli("verify", token, "--receipt-key", other), "not among the receipt keys")
    # The served key with one byte changed (a coordinate of its point): no longer the signer's key.
    jwks = json.loads(public.read_text())
    jwks["keys"][0]["x"] = _flip(jwks["keys"][0]["x"], 5)
    (tmp_path / "changed-key.json").write_text(json.dumps(jwks))
    _refused(_cli("verify", token, "--receipt-key", tmp_path / "changed-key.json"), "key")
    # The receipt's version no longer in the store: replay says so.
    empty = FilesystemStore(tmp_path / "empty", keys[1])
    empty.init()
    elsewhere = ["--store", empty.root, "--public-key", keys[1]]
    replay = _cli("replay", token, tmp_path / "photo.jpg", "--receipt-key", public, *elsewhere)
    _refused(replay, "is no longer in the store")


def _b64decode(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64encode(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _flip(segment: str, at: int) -> str:
    """`segment` with the base64url character at `at` replaced by another valid one."""
    c = segment[at]
    return segment[:at] + ("A" if c != "A" else "B") + segment[at + 1 :]


def test_verify_refuses_what_is_not_a_receipt() -> None:
    with pytest.raises(ReceiptError, match="not a receipt"):
        verify("hello", ReceiptKeys("nowhere", {}))


def test_a_receipt_key_that_does_not_load_stops_startup_naming_the_variable(store: FilesystemStore, keys) -> None:
    from pydantic import ValidationError

    from app.settings import Settings, settings_error

    for key in (keys[1], store.root / "state.json"):  # a public key cannot sign; nor can a JSON file
        with pytest.raises(ValidationError) as refused:
            Settings(store=str(store.root), public_key=keys[1], receipt_key=key)
        assert settings_error(refused.value).startswith("settings: APP_RECEIPT_KEY: ")
