"""An S3 that refuses connections or hangs: every call of the model store and of the capture
store fails with the store's own error (the service answers 503), in bounded time."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from model_store.capture import CapturedImage, CaptureError, S3Capture, new_record
from model_store.errors import StoreError
from model_store.store.s3 import S3Store
from tests.utils.s3 import StallingProxy, client_env
from tests.utils.stores import BUCKET


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed


def _point_at(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in client_env(url).items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def refusing_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_* pointing at an S3 endpoint that refuses connections."""
    _point_at(_closed_port_url(), monkeypatch)


_IMAGE = CapturedImage(b"\xff\xd8\xff" + b"x" * 16, "JPEG", 0.9, "damaged")
_CAPTURE_CALLS: dict[str, Callable[[S3Capture], object]] = {
    "put_request": lambda c: c.put_request("r1", new_record("r1", "v1", "s", [_IMAGE]), [_IMAGE]),
    "record": lambda c: c.record("r1"),
    "put_label": lambda c: c.put_label("r1", {"labels": ["damaged"]}),
    "records": lambda c: list(c.records()),
    "labels": lambda c: c.labels(),
    "image": lambda c: c.image("r1", "0.jpg"),
    "enforce": lambda c: c.enforce(1, 1.0),
    "find": lambda c: c.find("0" * 64),
}


@pytest.mark.parametrize("call", list(_CAPTURE_CALLS))
@pytest.mark.usefixtures("refusing_s3")
def test_every_capture_call_to_an_unreachable_s3_is_a_capture_error(call: str) -> None:
    with pytest.raises(CaptureError, match=r"s3://model-store-tests/capture: .* failed"):
        _CAPTURE_CALLS[call](S3Capture(BUCKET, "capture"))


_STORE_CALLS: dict[str, Callable[[S3Store], object]] = {
    "exists": lambda s: s.exists(),
    "pointer_stamp": lambda s: s.pointer_stamp(),
    "versions": lambda s: s.versions(),
    "audit_log": lambda s: s.audit_log(),
    "load": lambda s: s.load("v1"),
    "shadow": lambda s: s.shadow(),
    "init": lambda s: s.init(),
}


@pytest.mark.parametrize("call", list(_STORE_CALLS))
@pytest.mark.usefixtures("refusing_s3")
def test_every_store_call_to_an_unreachable_s3_is_a_store_error(call: str, keys, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"s3://model-store-tests/somewhere: .* failed"):
        _STORE_CALLS[call](S3Store(BUCKET, "somewhere", keys[1], cache_dir=tmp_path))


@pytest.mark.slow  # waits out real S3 timeouts (about 10 s per call)
def test_a_hung_s3_fails_store_and_capture_calls_in_bounded_time(
    s3_server: str, keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with StallingProxy(s3_server) as proxy:
        _point_at(proxy.url, monkeypatch)
        proxy.stall()  # accepts connections, never answers
        calls: list[tuple[str, type[Exception], Callable[[], object]]] = [
            ("store versions", StoreError, S3Store(BUCKET, "somewhere", keys[1], cache_dir=tmp_path).versions),
            ("capture record", CaptureError, lambda: S3Capture(BUCKET, "capture").record("r1")),
        ]
        for what, error, call in calls:
            started = time.monotonic()
            with pytest.raises(error, match="ReadTimeoutError"):
                call()
            elapsed = time.monotonic() - started
            print(f"hung S3, {what}: refused after {elapsed:.1f}s")
            # boto's defaults (60 s read timeout, retried) held callers for minutes.
            assert elapsed < 40, f"{what} took {elapsed:.0f}s"
