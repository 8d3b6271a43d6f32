"""Health, readiness, metrics, structured logs, following the store, settings."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from app.settings import Settings
from model_store import activation
from model_store.store import FilesystemStore
from tests.utils.bundles import failing_parity_copy, proof_from_elsewhere
from tests.utils.factories import image_bytes
from tests.utils.server import ADMIN_TOKEN, LiveServer
from tests.utils.sockets import listening_addresses
from tests.utils.waiting import eventually

pytestmark = pytest.mark.slow  # real servers / subprocesses


def test_not_ready_until_a_version_is_active_then_follows_the_store(tmp_path: Path, keys, bundles) -> None:
    store = FilesystemStore(tmp_path / "store", keys[1])
    store.import_bundle(bundles["v1"], actor="t")
    with LiveServer(store.root, keys[1], follow_interval_s=0.1) as srv:
        assert httpx.get(f"{srv.url}/healthz").json() == {"status": "ok"}
        r = httpx.get(f"{srv.url}/readyz")
        assert r.status_code == 503 and r.json()["reason"] == "no active version in the store"
        p = httpx.post(f"{srv.url}/v1/predict", content=image_bytes(1), headers={"Content-Type": "image/jpeg"})
        assert p.status_code == 503 and p.json()["error"] == "not_ready"
        assert httpx.get(f"{srv.url}/v1/parity").status_code == 503

        activation.activate(store, "v1", actor="cli")  # another process (the CLI, a replica) moves the pointer
        assert srv.wait_ready(timeout=30)["version"] == "v1"
        store.import_bundle(bundles["v2"], actor="t")
        activation.activate(store, "v2", actor="cli")
        eventually(lambda: httpx.get(f"{srv.url}/readyz").json().get("version") == "v2", what="v2 served")
        assert httpx.get(f"{srv.url}/readyz").json()["refused"] == {}


def test_a_replica_keeps_serving_when_the_store_points_at_a_bad_bundle(store, keys, bundles, tmp_path) -> None:
    bad = failing_parity_copy(bundles["v2"], tmp_path / "v3", keys[0], "v3")
    store.import_bundle(bad, actor="t")
    with LiveServer(store.root, keys[1], follow_interval_s=0.1) as srv:
        assert srv.wait_ready()["version"] == "v1"
        # Another machine (other kernels, other outputs) proved v3 and moved the pointer;
        # this replica runs its own parity before serving, and refuses.
        store.activate("v3", actor="replica-b", proof=proof_from_elsewhere(store.bundle_dir("v3")))
        body = eventually(lambda: (b := httpx.get(f"{srv.url}/readyz").json())["refused"] and b, what="v3 refused")
        assert body["ready"] and body["version"] == "v1" and body["refused"] == {"v3": "parity_failed"}
        assert 'model_load_refusals_total{reason="parity_failed"} 1.0' in httpx.get(f"{srv.url}/metrics").text


def test_a_store_pointer_to_a_tampered_bundle_is_refused_and_reported(tmp_path: Path, keys, bundles) -> None:
    store = FilesystemStore(tmp_path / "store", keys[1])
    store.import_bundle(bundles["v1"], actor="t")
    activation.activate(store, "v1", actor="t")
    weights = store.bundle_dir("v1") / "model.safetensors"
    os.chmod(weights, 0o644)
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with LiveServer(store.root, keys[1]) as srv:
        reason = eventually(
            lambda: "refused" in (r := httpx.get(f"{srv.url}/readyz").json().get("reason", "")) and r,
            what="the tampered bundle refused",
        )
        assert reason == "active version v1 refused (bundle_tampered)"  # a code: /readyz shows no paths
        assert httpx.get(f"{srv.url}/readyz").status_code == 503


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


def test_metrics_and_structured_logs(server: LiveServer) -> None:
    records: list[logging.LogRecord] = []
    handler = _Collect(records)
    logging.getLogger("app.access").addHandler(handler)
    try:
        r = httpx.post(
            f"{server.url}/v1/predict",
            content=image_bytes(3),
            headers={"Content-Type": "image/jpeg", "X-Request-ID": "station-7-0001"},
        )
        bad = httpx.post(f"{server.url}/v1/predict", content=b"x", headers={"Content-Type": "text/plain"})
    finally:
        logging.getLogger("app.access").removeHandler(handler)
    # The request id is the service's own (it names captures); the station's is kept beside it.
    rid = r.json()["request_id"]
    assert r.headers["x-request-id"] == rid != "station-7-0001"
    assert r.headers["x-client-request-id"] == "station-7-0001"
    lines = [rec.msg for rec in records if isinstance(rec.msg, dict)]
    ok = next(x for x in lines if x["request_id"] == rid)
    assert ok["client_request_id"] == "station-7-0001"
    assert ok["route"] == "/v1/predict" and ok["status"] == 200 and ok["version"] == "v1" and ok["latency_ms"] > 0
    assert any(x["status"] == 415 and x["request_id"] == bad.headers["x-request-id"] for x in lines)

    text = httpx.get(f"{server.url}/metrics").text
    assert 'http_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert 'http_requests_total{method="POST",route="/v1/predict",status="415"}' in text
    assert "http_request_duration_seconds_bucket" in text and "batch_size_images_bucket" in text
    assert 'active_model_info{manifest_sha256="' in text and 'version="v1"' in text
    assert "parity_passed 1.0" in text and "queue_depth_images 0.0" in text
    assert 'model_swaps_total{how="store pointer change"} 1.0' in text
    assert 'predicted_images_total{decision="' in text


def test_every_json_answer_ends_with_a_newline(server: LiveServer) -> None:
    # `curl .../readyz; curl .../metrics` must not run the JSON into the next output.
    jpeg = {"Content-Type": "image/jpeg"}
    answers = {
        "readyz": httpx.get(f"{server.url}/readyz"),
        "healthz": httpx.get(f"{server.url}/healthz"),
        "parity": httpx.get(f"{server.url}/v1/parity"),
        "predict": httpx.post(f"{server.url}/v1/predict", content=image_bytes(3), headers=jpeg),
        "predict multipart": httpx.post(f"{server.url}/v1/predict", files=[("files", ("a.jpg", image_bytes(4)))]),
        "models": httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}),
        "bad image": httpx.post(f"{server.url}/v1/predict", content=b"x", headers=jpeg),
        "unauthorized": httpx.get(f"{server.url}/v1/models"),
        "unknown route": httpx.get(f"{server.url}/v1/nothing-here"),
    }
    for name, r in answers.items():
        assert r.headers["content-type"].startswith("application/json"), name
        assert r.content.endswith(b"}\n") and not r.content.endswith(b"\n\n"), (name, r.content[-40:])
        json.loads(r.content)  # still one JSON document


def test_json_log_lines_on_stderr(store, keys) -> None:
    """`python -m app` as ops run it: JSON lines on stderr, bound to 127.0.0.1 by default."""
    env = {**os.environ, "APP_STORE": str(store.root), "APP_PUBLIC_KEY": str(keys[1]), "APP_PORT": "0"}
    env.pop("APP_HOST", None)
    proc = subprocess.Popen([sys.executable, "-m", "app"], env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        first = json.loads(proc.stderr.readline())
        assert first["logger"] == "app.model" and "loaded v1" in first["message"]
        bound = eventually(lambda: listening_addresses(proc.pid), what="the service's listening socket")
        assert {address for address, _ in bound} == {"127.0.0.1"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "APP_STORE"),
        ({"APP_ADMIN_TOKEN": "short"}, "at least 16 printable characters"),
        ({"APP_ADMIN_TOKEN": " " * 16}, "with no spaces"),
        ({"APP_WORKERS": "0"}, "APP_WORKERS"),
        ({"APP_PUBLIC_KEY": "/nonexistent.pem"}, "is not a file"),
        ({"APP_QUEUE_BOUND": "2", "APP_MAX_IMAGES_PER_REQUEST": "8"}, "APP_QUEUE_BOUND must be at least"),
        ({"APP_MAX_BATCH": "0"}, "APP_MAX_BATCH"),
    ],
)
def test_unsafe_settings_stop_startup(store, keys, env: dict[str, str], message: str) -> None:
    base = {"APP_STORE": str(store.root), "APP_PUBLIC_KEY": str(keys[1])} if env else {}
    full = {k: v for k, v in os.environ.items() if not k.startswith("APP_")} | base | env
    r = subprocess.run([sys.executable, "-m", "app"], env=full, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_settings_accept_a_valid_configuration(store, keys) -> None:
    s = Settings(store=str(store.root), public_key=keys[1], admin_token=ADMIN_TOKEN)
    assert s.admin_token is not None and ADMIN_TOKEN not in repr(s)  # the secret never shows up in logs
    with pytest.raises(ValidationError):
        Settings.model_validate({"store": str(store.root), "public_key": keys[1], "surprise": 1})


def test_the_public_key_may_be_a_directory_of_trusted_keys(store, keys, other_keys, tmp_path: Path) -> None:
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    with pytest.raises(ValidationError, match=r"holds no \*.pem file"):
        Settings(store=str(store.root), public_key=trusted)
    for i, key in enumerate((keys[1], other_keys[1])):
        (trusted / f"{i}.pem").write_bytes(key.read_bytes())
    assert Settings(store=str(store.root), public_key=trusted).public_key == trusted
