"""Every route, fast: the real app (middleware, routes, errors, model host, store, signatures)
over an in-process stand-in for the inference workers (`tests.utils.fakes`), through
Starlette's TestClient. The end-to-end suites run the same routes against real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from model_store.store import FilesystemStore
from tests.utils.archives import tar_of
from tests.utils.factories import image_bytes
from tests.utils.fakes import FakePipeline, fake_probability
from tests.utils.server import ADMIN_TOKEN, admin
from tests.utils.waiting import eventually

JPEG = image_bytes(31, (120, 90))


def _client(store: Path, public_key: Path, **settings: Any) -> TestClient:
    values: dict[str, Any] = {"store": str(store), "public_key": public_key, "follow_interval_s": 0.0}
    values.update(settings)
    return TestClient(create_app(Settings(**values), pipeline=FakePipeline()), raise_server_exceptions=True)


@pytest.fixture
def client(store: FilesystemStore, keys) -> Iterator[TestClient]:
    with _client(store.root, keys[1], admin_token=ADMIN_TOKEN) as c:
        eventually(lambda: c.get("/readyz").status_code == 200, timeout=30, what="the store's v1 to load")
        yield c


def test_predict_raw_and_multipart(client: TestClient) -> None:
    r = client.post("/v1/predict", content=JPEG, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["version"] == "v1"
    assert body["results"][0]["probability"] == fake_probability(JPEG)
    assert body["results"][0]["filename"] is None
    r = client.post("/v1/predict", files=[("files", ("a.jpg", JPEG)), ("files", ("b.png", image_bytes(2, fmt="PNG")))])
    assert [x["filename"] for x in r.json()["results"]] == ["files[0] (a.jpg)", "files[1] (b.png)"]


@pytest.mark.parametrize(
    ("body", "ctype", "status", "code"),
    [
        (JPEG, "text/plain", 415, "unsupported_media_type"),
        (b"not an image", "image/jpeg", 422, "not_an_image"),
        (b"GIF89a" + b"\0" * 20, "image/gif", 422, "unsupported_image_format"),
    ],
)
def test_predict_refusals(client: TestClient, body: bytes, ctype: str, status: int, code: str) -> None:
    r = client.post("/v1/predict", content=body, headers={"Content-Type": ctype})
    assert (r.status_code, r.json()["error"]) == (status, code), r.text


def test_predict_and_parity_say_not_ready_the_same_way(tmp_path: Path, keys) -> None:
    empty = FilesystemStore(tmp_path / "empty", keys[1])
    empty.root.mkdir(parents=True, exist_ok=True)
    with _client(empty.root, keys[1]) as c:
        for r in (c.post("/v1/predict", content=JPEG, headers={"Content-Type": "image/jpeg"}), c.get("/v1/parity")):
            assert r.status_code == 503 and r.json()["error"] == "not_ready", r.text
            assert r.headers["retry-after"]
        assert c.get("/readyz").status_code == 503


def test_parity(client: TestClient) -> None:
    r = client.get("/v1/parity")
    assert r.status_code == 200 and r.json()["passed"] and r.headers["age"] == "0"
    assert client.get("/v1/parity?version=v2").status_code == 401
    r = client.get("/v1/parity?version=v2", headers=admin())
    assert r.status_code == 200 and r.json()["version"] == "v2"


def test_models_list_show_activate_rollback(client: TestClient) -> None:
    assert client.get("/v1/models").status_code == 401
    listing = client.get("/v1/models", headers=admin()).json()
    assert (listing["active"], listing["served"]) == ("v1", "v1")
    assert client.get("/v1/models/v2", headers=admin()).json()["version"] == "v2"
    assert client.get("/v1/models/nope", headers=admin()).status_code == 404
    r = client.post("/v1/models/v2/activate", headers=admin(), json={"reason": "test"})
    assert r.status_code == 200 and r.json()["active"] == "v2", r.text
    r = client.post("/v1/models/rollback", headers=admin())
    assert r.status_code == 200 and r.json()["active"] == "v1", r.text
    audit = client.get("/v1/audit", headers=admin()).json()
    assert [e["action"] for e in audit[-2:]] == ["activate", "rollback"]


def test_upload(client: TestClient, bundles, tmp_path: Path) -> None:
    r = client.post("/v1/models", headers={**admin(), "Content-Type": "application/json"}, content=b"{}")
    assert r.status_code == 415
    data = tar_of(bundles["v2"])
    r = client.post("/v1/models", headers={**admin(), "Content-Type": "application/x-tar"}, content=data)
    assert r.status_code == 200 and r.json() == {"version": "v2", "created": False}, r.text


def test_shadow(client: TestClient) -> None:
    assert client.get("/v1/shadow", headers=admin()).json()["shadow"] is None
    r = client.put("/v1/shadow", headers=admin(), json={"version": "v2", "fraction": 1.0})
    assert r.status_code == 200, r.text
    client.post("/v1/predict", content=JPEG, headers={"Content-Type": "image/jpeg"})
    assert client.get("/v1/shadow", headers=admin()).json()["shadow"]["images"] == 1
    assert client.request("DELETE", "/v1/shadow", headers=admin()).status_code == 200


def test_monitoring_feedback_and_audit(client: TestClient) -> None:
    client.post("/v1/predict", content=JPEG, headers={"Content-Type": "image/jpeg", "X-Station-ID": "dock-1"})
    body = client.get("/v1/monitoring", headers=admin()).json()
    assert body["version"] == "v1" and body["feedback"] is None
    r = client.post("/v1/feedback", headers=admin(), json={"request_id": "x", "labels": ["damaged"]})
    assert r.status_code == 409 and r.json()["error"] == "capture_off"
    assert client.post("/v1/feedback", json={"request_id": "x", "labels": ["damaged"]}).status_code in (401, 403)
    assert client.get("/v1/audit?limit=1", headers=admin()).status_code == 200


def test_health_metrics_console_and_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["workers_answering"] == 1
    client.post("/v1/predict", content=JPEG, headers={"Content-Type": "image/jpeg"})
    metrics = client.get("/metrics").text
    assert 'predicted_images_total{decision="' in metrics and "queue_depth_images 0.0" in metrics
    assert "text/html" in client.get("/console").headers["content-type"]
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_management_is_off_without_a_token(store: FilesystemStore, keys) -> None:
    with _client(store.root, keys[1]) as c:
        eventually(lambda: c.get("/readyz").status_code == 200, timeout=30, what="the store's v1 to load")
        r = c.get("/v1/models", headers=admin())
        assert r.status_code == 403 and r.json()["error"] == "management_disabled"
