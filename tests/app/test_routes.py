"""Every route, fast: the real app (middleware, routes, errors, model host, store, signatures)
over an in-process stand-in for the inference workers (`tests.utils.fakes`), through
Starlette's TestClient. The end-to-end suites run the same routes against real processes."""

from __future__ import annotations

import base64
import gzip
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput

from app.main import create_app
from app.settings import Settings
from model_store.store import FilesystemStore
from tests.utils.archives import tar_of
from tests.utils.factories import image_bytes
from tests.utils.fakes import FakePipeline, fake_probability
from tests.utils.hostile import oip_body, zip_bomb
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


def test_explain_answers_predicts_probability_for_one_image(client: TestClient) -> None:
    r = client.post("/v1/explain", content=JPEG, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["probability"] == fake_probability(JPEG) and body["model"]["version"] == "v1"
    assert body["image"] == {"width": 120, "height": 90} and body["grid"] == [[1.0]]
    assert base64.b64decode(body["overlay_png"]).startswith(b"\x89PNG")
    r = client.post("/v1/explain", files=[("files", ("a.jpg", JPEG)), ("files", ("b.jpg", JPEG))])
    assert (r.status_code, r.json()["error"]) == (422, "one_image_only"), r.text


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


# --- the Open Inference Protocol v2 (tests/app/test_oip.py drives it with tritonclient) -------


def _v2_request(images: list[bytes], *, binary: bool = False, **parameters: Any) -> tuple[bytes, dict[str, str]]:
    """A request body exactly as tritonclient encodes it (its own encoder, no server needed)."""
    image = InferInput("image", [len(images)], "BYTES")
    image.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    outputs = [InferRequestedOutput(name, binary_data=binary) for name in ("probability", "decision")]
    body, header_length = InferenceServerClient.generate_request_body([image], outputs, **parameters)
    return body, {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}


def _model_name(client: TestClient) -> str:
    name: str = client.get("/v1/models/v1", headers=admin()).json()["name"]
    return name


def test_v2_infer_scores_a_batch_as_v1_does(client: TestClient) -> None:
    name = _model_name(client)
    images = [JPEG, image_bytes(2, fmt="PNG"), image_bytes(3, (64, 200))]
    body, headers = _v2_request(images, request_id="abc")
    r = client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == (name, "v1", "abc")
    assert answer["parameters"]["version"] == "v1" and answer["parameters"]["request_id"] == r.headers["x-request-id"]
    out = {o["name"]: o for o in answer["outputs"]}
    assert out["probability"]["datatype"] == "FP32" and out["probability"]["shape"] == [3]
    assert out["probability"]["data"] == [fake_probability(i) for i in images]
    form = [("files", (f"{i}", image)) for i, image in enumerate(images)]
    v1 = client.post("/v1/predict", files=form).json()["results"]
    assert out["decision"]["data"] == [x["decision"] for x in v1]
    # Binary outputs, under the served version's path, parsed by tritonclient's own decoder.
    body, headers = _v2_request(images, binary=True)
    r = client.post(f"/v2/models/{name}/versions/v1/infer", content=body, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream", r.text
    result = InferenceServerClient.parse_response_body(
        r.content, header_length=int(r.headers["inference-header-content-length"])
    )
    assert result.as_numpy("probability").tolist() == pytest.approx([fake_probability(i) for i in images])
    assert [d.decode() for d in result.as_numpy("decision")] == [x["decision"] for x in v1]


def test_v2_health_and_metadata(client: TestClient) -> None:
    name = _model_name(client)
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]
    meta = client.get(f"/v2/models/{name}").json()
    assert meta["name"] == name and meta["versions"] == ["v1"]
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert client.get(f"/v2/models/{name}/versions/v1").status_code == 200
    assert client.get(f"/v2/models/{name}/ready").status_code == 200
    assert client.get(f"/v2/models/{name}/versions/v1/ready").status_code == 200


def test_v2_errors_have_the_protocols_shape_and_name_the_served_version(client: TestClient) -> None:
    name = _model_name(client)
    r = client.get(f"/v2/models/{name}/versions/v2")
    assert r.status_code == 404 and r.json() == {"error": r.json()["error"]}, r.text
    assert r.json()["error"].startswith("version_not_found:") and "'v1'" in r.json()["error"]
    body, headers = _v2_request([JPEG])
    r = client.post(f"/v2/models/{name}/versions/v2/infer", content=body, headers=headers)
    assert r.status_code == 404 and "'v1'" in r.json()["error"], r.text
    r = client.post("/v2/models/nope/infer", content=body, headers=headers)
    assert r.status_code == 404 and r.json()["error"].startswith("model_not_found:"), r.text
    # BYTES as JSON data: a clear 400 saying to send binary data.
    header = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}]}
    r = client.post(f"/v2/models/{name}/infer", json=header)
    assert r.status_code == 400 and "binary data" in r.json()["error"], r.text
    # Not an image: the same status as /v1, in this protocol's shape.
    body, headers = _v2_request([b"not an image"])
    r = client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
    assert r.status_code == 422 and r.json()["error"].startswith("not_an_image:"), r.text
    # /v1 keeps its own shape.
    assert set(client.get("/v1/nowhere").json()) == {"error", "message"}
    assert set(client.get("/v2/nowhere").json()) == {"error"}


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_v2_decompresses_within_the_body_bound(client: TestClient, encoding: str) -> None:
    name = _model_name(client)
    body, headers = _v2_request([JPEG, JPEG])
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    r = client.post(f"/v2/models/{name}/infer", content=packed, headers={**headers, "Content-Encoding": encoding})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [fake_probability(JPEG)] * 2
    # A bomb: a few hundred KiB that would inflate to far more than the request limit.
    bomb = zip_bomb(encoding)
    r = client.post(f"/v2/models/{name}/infer", content=bomb, headers={"Content-Encoding": encoding})
    assert r.status_code == 413 and r.json()["error"].startswith("payload_too_large:"), r.text


@pytest.mark.parametrize(
    ("lie", "status", "code"),
    [
        ({"binary_size": 10_000}, 400, "invalid_inference_request"),
        ({"sizes": [len(JPEG) + 1]}, 400, "invalid_inference_request"),
        ({"sizes": [0xFFFFFFFF]}, 413, "image_too_large"),
        ({"shape": 2}, 400, "invalid_inference_request"),
        ({"shape": 10**9}, 413, "too_many_images"),
    ],
)
def test_v2_refuses_lying_lengths(client: TestClient, lie: dict[str, Any], status: int, code: str) -> None:
    body, header_length = oip_body([JPEG], **lie)
    headers = {"Inference-Header-Content-Length": str(header_length)}
    r = client.post(f"/v2/models/{_model_name(client)}/infer", content=body, headers=headers)
    assert r.status_code == status and r.json()["error"].startswith(f"{code}: "), r.text


def test_v2_timeout_parameter_is_the_requests_budget(client: TestClient, monkeypatch) -> None:
    """Triton's `timeout` (microseconds): the same deadline as /v1's X-Request-Timeout-Ms."""
    import types

    from app.edge import serve

    name = _model_name(client)
    body, headers = _v2_request([JPEG], timeout=10_000_000)  # 10 s
    assert client.post(f"/v2/models/{name}/infer", content=body, headers=headers).status_code == 200
    body, headers = _v2_request([JPEG], timeout=0)
    r = client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
    assert r.status_code == 400 and "timeout" in r.json()["error"], r.text
    # Two seconds pass between arrival and the checks: within the default budget (5 s), past 5 ms.
    later = types.SimpleNamespace(monotonic=lambda: time.monotonic() + 2)
    monkeypatch.setattr(serve, "time", later)
    body, headers = _v2_request([JPEG], timeout=5_000)
    r = client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
    assert r.status_code == 504 and r.json()["error"].startswith("deadline_exceeded: "), r.text
    assert "5 ms" in r.json()["error"]
