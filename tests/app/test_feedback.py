"""Feedback capture against hostile callers (security review, issue 19), over real HTTP:
capture ids are the service's own, bound to the station and never replaced; store faults
are JSON 503/507; the size bound holds at every write; and `POST /v1/feedback` checks
its token before reading a byte of its body."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from model_store.capture import (
    CapturedImage,
    CaptureError,
    CaptureNotFound,
    CaptureStore,
    FilesystemCapture,
    new_record,
)
from model_store.store import FilesystemStore
from tests.utils.factories import image_bytes
from tests.utils.server import ADMIN_TOKEN, LiveServer, admin
from tests.utils.waiting import eventually

pytestmark = pytest.mark.slow

STATION_TOKEN = "station-token-0123456789"
STATION = {"Authorization": f"Bearer {STATION_TOKEN}"}
SERVER_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def capture_dir(tmp_path: Path) -> Path:
    return tmp_path / "capture"


@pytest.fixture
def location(request: pytest.FixtureRequest, capture_dir: Path) -> str:
    """The capture store: the directory, or (parametrized "s3") a prefix on the moto server."""
    if getattr(request, "param", "filesystem") == "s3":
        request.getfixturevalue("s3_server")
        from tests.utils.stores import BUCKET

        return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}/capture"
    return str(capture_dir)


BOTH = pytest.mark.parametrize("location", ["filesystem", "s3"], indirect=True)


@pytest.fixture
def srv(store: FilesystemStore, keys, location: str) -> Iterator[LiveServer]:
    with LiveServer(
        store.root, keys[1], admin_token=ADMIN_TOKEN, station_token=STATION_TOKEN,
        capture_fraction=1.0, capture_location=location, body_timeout_s=2.0,
    ) as s:  # fmt: skip
        s.wait_ready()
        yield s


def _predict(srv: LiveServer, image: bytes, station: str, request_id: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "image/jpeg", "X-Station-ID": station}
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    r = httpx.post(f"{srv.url}/v1/predict", content=image, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return r


def _captured(srv: LiveServer, n: int) -> None:
    capture = srv.app.state.service.capture
    eventually(lambda: capture.written + capture.failed + capture.dropped >= n, what=f"{n} capture(s) settled")


def _label(srv: LiveServer, rid: str, headers: dict[str, str], label: str = "damaged") -> httpx.Response:
    return httpx.post(f"{srv.url}/v1/feedback", json={"request_id": rid, "labels": [label]}, headers=headers)


# --- 1. capture ids: the service's, bound to the station, create-only ---------------------------


@BOTH
def test_a_client_chosen_request_id_cannot_take_or_replace_a_stations_capture(srv: LiveServer) -> None:
    attacker_image, station_image = image_bytes(1), image_bytes(2)
    # The attacker predicts first with the id the station is going to use.
    attacker = _predict(srv, attacker_image, "dock-x", request_id="dock3-000123")
    station = _predict(srv, station_image, "dock-3", request_id="dock3-000123")
    _captured(srv, 2)
    ids = [attacker.json()["request_id"], station.json()["request_id"]]
    for r, rid in zip((attacker, station), ids, strict=True):
        assert SERVER_ID.match(rid), rid  # the service's own id, whatever the client sent
        assert r.headers["x-request-id"] == rid
        assert r.headers["x-client-request-id"] == "dock3-000123"  # the client's, echoed for its logs
    assert ids[0] != ids[1]
    store = srv.app.state.service.capture.store
    with pytest.raises(CaptureNotFound):
        store.record("dock3-000123")
    assert srv.app.state.service.capture.written == 2
    assert store.image(ids[1], "0.jpg") == station_image  # the station's capture is its own image
    assert store.record(ids[1])["station"] == "dock-3"
    # The inspector's label lands on the station's image.
    assert _label(srv, ids[1], {**STATION, "X-Station-ID": "dock-3"}).status_code == 201
    label = store.labels()[ids[1]]
    assert label["labels"] == ["damaged"] and label["station"] == "dock-3"


@BOTH
def test_feedback_must_come_from_the_station_whose_request_was_captured(srv: LiveServer) -> None:
    rid = _predict(srv, image_bytes(3), "dock-1").json()["request_id"]
    _captured(srv, 1)
    unknown = _label(srv, uuid.uuid4().hex, {**STATION, "X-Station-ID": "dock-2"})
    assert unknown.status_code == 404
    for other in ({**STATION, "X-Station-ID": "dock-2"}, STATION):  # another station, or none
        r = _label(srv, rid, other)
        assert r.status_code == 404, r.text
        assert r.json()["error"] == unknown.json()["error"] == "request_not_captured"
        assert "dock-1" not in r.text  # another station's id is not revealed
    store = srv.app.state.service.capture.store
    assert rid not in store.labels()
    assert _label(srv, rid, {**STATION, "X-Station-ID": "dock-1"}, "intact").status_code == 201
    # The management token labels any capture: a correction, recorded as the admin's.
    assert _label(srv, rid, admin(), "damaged").status_code == 201
    label = store.labels()[rid]
    assert label["labels"] == ["damaged"] and "token" in label["by"]


def _request(data: bytes) -> tuple[dict[str, Any], list[CapturedImage]]:
    images = [CapturedImage(data, "JPEG", 0.9, "damaged")]
    return new_record("the-id", "v1", "dock-1", images), images


@pytest.fixture(params=["filesystem", "filesystem-claimed", "s3"])
def capture_store(request: pytest.FixtureRequest, tmp_path: Path) -> CaptureStore:
    if request.param == "s3":
        request.getfixturevalue("s3_server")
        from model_store.capture import S3Capture
        from tests.utils.stores import BUCKET

        return S3Capture(BUCKET, f"{uuid.uuid4().hex[:12]}/capture")
    store = FilesystemCapture(tmp_path / "capture")
    if request.param == "filesystem-claimed":  # another writer's claim: an empty directory at the id
        (tmp_path / "capture" / "requests" / "the-id").mkdir(parents=True)
    return store


def test_a_capture_is_never_replaced(capture_store: CaptureStore) -> None:
    first, second = image_bytes(4), image_bytes(5)
    if not isinstance(capture_store, FilesystemCapture) or not (capture_store.root / "requests" / "the-id").exists():
        capture_store.put_request("the-id", *_request(first))
        with pytest.raises(CaptureError, match="already"):
            capture_store.put_request("the-id", *_request(second))
        assert capture_store.image("the-id", "0.jpg") == first
        assert capture_store.record("the-id")["images"][0]["sha256"] == _request(first)[0]["images"][0]["sha256"]
    else:  # the id is claimed but not yet complete: not taken over either
        with pytest.raises(CaptureError, match="already"):
            capture_store.put_request("the-id", *_request(second))
        assert list((capture_store.root / "requests" / "the-id").iterdir()) == []


def test_a_captured_image_is_found_by_its_sha256_until_its_request_is_removed(capture_store: CaptureStore) -> None:
    """The index a decision receipt's `image_sha256` finds its photo by (one folder or prefix
    read, never a scan), kept in step with the size bound's removals."""
    photo, other = image_bytes(21), image_bytes(22)
    for rid, images in (("r-1", [photo, other]), ("r-2", [photo])):
        captured = [CapturedImage(data, "JPEG", 0.5, "intact") for data in images]
        capture_store.put_request(rid, new_record(rid, "v1", "dock-1", captured), captured)
    sha = hashlib.sha256(photo).hexdigest()
    assert {(f.request_id, f.file) for f in capture_store.find(sha)} == {("r-1", "0.jpg"), ("r-2", "0.jpg")}
    assert [(f.request_id, f.file) for f in capture_store.find(hashlib.sha256(other).hexdigest())] == [("r-1", "1.jpg")]
    assert capture_store.image("r-2", capture_store.find(sha, limit=1)[0].file) == photo
    assert len(capture_store.find(sha, limit=1)) == 1
    assert capture_store.find("0" * 64) == []
    with pytest.raises(CaptureNotFound, match="not a sha256"):
        capture_store.find("../../etc/passwd")
    capture_store.enforce(0, 1e9)  # the size bound removes every request: its index entries go with it
    assert capture_store.find(sha) == []
    if isinstance(capture_store, FilesystemCapture):
        assert not any((capture_store.root / "images").iterdir())  # no empty folder left per photo


# --- 2. store faults --------------------------------------------------------------------------


def test_a_full_or_broken_capture_store_is_a_json_507_or_503_naming_no_path(
    srv: LiveServer, capture_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rid = _predict(srv, image_bytes(6), "dock-1").json()["request_id"]
    _captured(srv, 1)

    def full(path: Path, data: bytes, **_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("model_store.capture.atomic_write_bytes", full)
    r = _label(srv, rid, {**STATION, "X-Station-ID": "dock-1"})
    assert r.status_code == 507, r.text
    assert r.json()["error"] == "capture_full" and "space" in r.json()["message"]
    assert str(capture_dir) not in r.text
    monkeypatch.undo()

    record = capture_dir / "requests" / rid / "record.json"
    record.unlink()
    record.mkdir()  # unreadable: a directory where the record should be
    r = _label(srv, rid, {**STATION, "X-Station-ID": "dock-1"})
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "capture_error" and r.headers["retry-after"]
    assert str(capture_dir) not in r.text


# --- 3. the size bound, at every write ------------------------------------------------------


def _tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, names in os.walk(root):  # os.walk skips what disappears while it walks
        for name in names:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(folder, name)).st_size
    return total


def test_the_capture_directory_never_passes_its_bound(store: FilesystemStore, keys, tmp_path: Path) -> None:
    capture = tmp_path / "capture"
    bound = 1_000_000  # APP_CAPTURE_MAX_MEGABYTES=1, the smallest
    images = [image_bytes(100 + i, (300, 300), "PNG") for i in range(2)]
    per_request = sum(map(len, images)) + 1024  # the record is well under a KiB
    print(f"request: {per_request} bytes; bound: {bound}")
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    sent = 24
    with LiveServer(
        store.root, keys[1], capture_fraction=1.0, capture_location=str(capture), capture_max_megabytes=1
    ) as srv:
        srv.wait_ready()
        largest, done = 0, threading.Event()

        def sample() -> None:
            nonlocal largest
            while not done.is_set():
                largest = max(largest, _tree_bytes(capture))
                time.sleep(0.002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with httpx.Client(base_url=srv.url, timeout=60) as c, ThreadPoolExecutor(4) as pool:
                codes = list(pool.map(lambda _: c.post("/v1/predict", files=files).status_code, range(sent)))
            _captured(srv, sent)
        finally:
            done.set()
            sampler.join()
        largest = max(largest, _tree_bytes(capture))
        written = srv.app.state.service.capture.written
    print(f"largest sampled: {largest} bytes; written {written} of {sent}")
    assert codes == [200] * sent
    assert largest <= bound + per_request
    assert written > bound // per_request + 1  # the oldest made room: capture did not just stop


# --- 4. the token before the body -------------------------------------------------------------


def _head(token: str | None, length: int, expect: bool = False) -> bytes:
    lines = ["POST /v1/feedback HTTP/1.1", "Host: x", "Content-Type: application/json", f"Content-Length: {length}"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if expect:
        lines.append("Expect: 100-continue")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _first_answer(port: int, chunks: list[bytes], timeout: float = 10.0) -> bytes:
    """The first bytes the server sends back (an interim `100 Continue` included); the
    connection stays open meanwhile, as a stalled client's would."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
        return data


def test_feedback_without_a_token_is_refused_before_its_body_is_read(srv: LiveServer) -> None:
    ten_gb = 10 * 1024**3
    start = time.monotonic()
    answer = _first_answer(srv.port, [_head(None, ten_gb, expect=True)])
    print(f"no token, 10 GB declared, Expect: 100-continue: answered in {time.monotonic() - start:.3f} s")
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]  # not `100 Continue`: the body is never asked for
    # A body that has started (300 MB declared, one byte sent): answered without waiting for the rest.
    answer = _first_answer(srv.port, [_head(None, 300 * 1024**2), b"{"])
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    answer = _first_answer(srv.port, [_head("wrong-token-0123456789", ten_gb, expect=True)])
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_feedback_bodies_are_bounded_in_size_and_time(srv: LiveServer) -> None:
    answer = _first_answer(srv.port, [_head(STATION_TOKEN, 10 * 1024**3, expect=True)])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"payload_too_large" in answer
    # Valid headers, then a body that stops after its first byte: refused at the body deadline (2 s).
    start = time.monotonic()
    answer = _first_answer(srv.port, [_head(STATION_TOKEN, 100), b"{"], timeout=20)
    print(f"stalled body: answered in {time.monotonic() - start:.3f} s")
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_feedback_bodies_are_still_validated(srv: LiveServer) -> None:
    for content in (b"not json", b'{"labels": ["intact"]}', b"\xff\xfe{}"):
        r = httpx.post(f"{srv.url}/v1/feedback", content=content, headers={**STATION, "X-Station-ID": "dock-1"})
        assert r.status_code == 422, (content, r.text)
        assert r.json()["error"] == "invalid_request"
    document = httpx.get(f"{srv.url}/openapi.json").json()
    schema = document["paths"]["/v1/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"request_id", "labels"} <= set(schema["properties"])
