"""Management API: auth, upload (safe tar), activate/rollback with parity, /v1/parity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from tests.utils.archives import HOSTILE_KINDS, hostile_tar, tar_of
from tests.utils.bundles import failing_parity_copy, resign_with_weights, snapshot
from tests.utils.factories import make_bundle
from tests.utils.server import ADMIN_TOKEN, LiveServer, admin

pytestmark = pytest.mark.slow  # real servers / subprocesses


def _upload(server: LiveServer, data: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    h = {"Content-Type": "application/x-tar", **(headers if headers is not None else admin())}
    return httpx.post(f"{server.url}/v1/models", content=data, headers=h, timeout=60)


def test_management_is_off_without_a_token(store, keys) -> None:
    with LiveServer(store.root, keys[1]) as srv:
        srv.wait_ready()
        for method, path in [
            ("GET", "/v1/models"),
            ("POST", "/v1/models/v2/activate"),
            ("POST", "/v1/models/rollback"),
            ("POST", "/v1/models"),
            ("GET", "/v1/models/v1"),
        ]:
            r = httpx.request(method, f"{srv.url}{path}", headers=admin())
            assert r.status_code == 403 and r.json()["error"] == "management_disabled", path
        assert store.active_version() == "v1"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": "Basic x"}]
)
def test_management_needs_the_right_bearer_token(server: LiveServer, store, headers: dict[str, str]) -> None:
    before = snapshot(store.root)
    r = httpx.post(f"{server.url}/v1/models/v2/activate", headers=headers)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    assert snapshot(store.root) == before


def test_list_and_show(server: LiveServer) -> None:
    r = httpx.get(f"{server.url}/v1/models", headers=admin())
    body = r.json()
    assert body["active"] == "v1" and body["served"] == "v1"
    assert [(v["version"], v["active"]) for v in body["versions"]] == [("v1", True), ("v2", False)]
    manifest = httpx.get(f"{server.url}/v1/models/v2", headers=admin()).json()
    assert manifest["version"] == "v2" and "parity" in manifest
    missing = httpx.get(f"{server.url}/v1/models/v9", headers=admin())
    assert missing.status_code == 404 and missing.json()["error"] == "version_not_found"


def test_upload_activate_rollback(server: LiveServer, store, keys, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "v3", keys[0], version="v3", seed=3).path
    r = _upload(server, tar_of(bundle))
    assert r.status_code == 201 and r.json() == {"version": "v3", "created": True}
    again = _upload(server, tar_of(bundle))
    assert again.status_code == 200 and again.json()["created"] is False

    r = httpx.post(
        f"{server.url}/v1/models/v3/activate",
        headers={**admin(), "X-Actor": "ops"},
        json={"reason": "new weights"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["active"] == "v3" and r.json()["previous"] == "v1" and r.json()["parity"]["passed"]
    assert server.wait_ready()["version"] == "v3"
    pred = httpx.post(
        f"{server.url}/v1/predict",
        content=bundle.joinpath("reference", "ref-0.jpg").read_bytes(),
        headers={"Content-Type": "image/jpeg"},
    )
    assert pred.json()["model"]["version"] == "v3"
    entry = store.audit_log()[-1]
    assert (entry.action, entry.to_version, entry.reason) == ("activate", "v3", "new weights")
    assert entry.actor.startswith("ops@127.0.0.1")

    r = httpx.post(f"{server.url}/v1/models/rollback", headers=admin(), timeout=60)
    assert r.status_code == 200 and r.json()["active"] == "v1"
    assert store.active_version() == "v1" and server.wait_ready()["version"] == "v1"


def test_a_revoked_version_is_refused_by_the_management_api(server: LiveServer, store) -> None:
    store.revoke("v2", actor="ops", reason="misses dents")
    before = snapshot(store.root)
    r = httpx.post(f"{server.url}/v1/models/v2/activate", headers=admin(), timeout=60)
    assert r.status_code == 409 and r.json()["error"] == "version_revoked", r.text
    assert "misses dents" in r.json()["message"]
    assert snapshot(store.root) == before and server.wait_ready()["version"] == "v1"


def test_an_actor_header_and_a_reason_cannot_forge_audit_lines(server: LiveServer, store) -> None:
    # HTTP forbids raw ESC and newlines in a header, but passes bytes 0x80-0xFF: 0x9B is the
    # 8-bit form of ESC [ that many terminals obey. The reason is JSON: anything goes.
    r = httpx.post(
        f"{server.url}/v1/models/v2/activate",
        headers=[(k.encode(), v.encode()) for k, v in admin().items()] + [(b"X-Actor", b"mallory\x9b31m")],
        json={"reason": "ok\n2026-01-01 forged line\x1b[2J"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    entry = httpx.get(f"{server.url}/v1/audit", headers=admin()).json()[-1]
    assert entry["action"] == "activate" and "forged line" in entry["reason"] and "mallory" in entry["actor"]
    assert entry["reason"].isprintable() and entry["actor"].isprintable(), entry
    stored = store.audit_log()[-1]
    assert stored.reason.isprintable() and stored.actor.isprintable(), stored


def test_parity_endpoint_passes_for_the_served_bundle(server: LiveServer) -> None:
    r = httpx.get(f"{server.url}/v1/parity")
    assert r.status_code == 200
    body = r.json()
    assert body["passed"] and body["version"] == "v1" and body["max_abs_diff"] <= body["tolerance"]
    assert len(body["images"]) == 4 and all(i["passed"] for i in body["images"])


def test_a_bundle_failing_parity_can_never_become_active(server: LiveServer, store, bundles, keys, tmp_path) -> None:
    bad = failing_parity_copy(bundles["v2"], tmp_path / "v2-bad", keys[0], "v2-bad")
    assert _upload(server, tar_of(bad)).status_code == 201  # it verifies: signature and digests are fine

    r = httpx.get(f"{server.url}/v1/parity", params={"version": "v2-bad"}, headers=admin(), timeout=60)
    assert r.status_code == 409
    body = r.json()
    assert body["error"] == "parity_failed" and not body["passed"] and body["max_abs_diff"] > body["tolerance"]

    r = httpx.post(f"{server.url}/v1/models/v2-bad/activate", headers=admin(), timeout=60)
    assert r.status_code == 409 and r.json()["error"] == "parity_failed"
    assert store.active_version() == "v1" and server.wait_ready()["version"] == "v1"
    assert 'model_load_refusals_total{reason="parity_failed"} 1.0' in httpx.get(f"{server.url}/metrics").text

    good = httpx.get(f"{server.url}/v1/parity", params={"version": "v2"}, headers=admin(), timeout=60)
    assert good.status_code == 200 and good.json()["version"] == "v2"
    assert httpx.get(f"{server.url}/v1/parity", params={"version": "v2"}).status_code == 401


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_unsafe_archives_are_refused_and_change_nothing(server: LiveServer, store, bundles, kind: str) -> None:
    before = snapshot(store.root)
    r = _upload(server, hostile_tar(kind, bundles["v1"]))
    assert r.status_code == 422 and r.json()["error"] == "unsafe_archive", r.text
    assert snapshot(store.root) == before
    assert not Path("/tmp/absolute-escape.txt").exists()


@pytest.mark.parametrize("tamper", ["flip", "unsigned", "not_a_tar"])
def test_tampered_uploads_are_refused_and_change_nothing(server, store, bundles, keys, tmp_path, tamper) -> None:
    path = tmp_path / "b"
    shutil.copytree(bundles["v2"], path)
    m = json.loads((path / "manifest.json").read_text())
    m["version"] = "v5"
    (path / "manifest.json").write_text(json.dumps(m))  # changed after signing
    if tamper == "unsigned":
        (path / "model.sig").unlink()
    data = b"this is not a tar archive" if tamper == "not_a_tar" else tar_of(path)
    before = snapshot(store.root)
    r = _upload(server, data)
    expected = {"flip": "bundle_tampered", "unsigned": "signature_missing", "not_a_tar": "unsafe_archive"}[tamper]
    assert r.status_code == 422 and r.json()["error"] == expected, r.text
    assert snapshot(store.root) == before


def test_upload_limits_and_content_type(store, keys, bundles) -> None:
    with LiveServer(store.root, keys[1], admin_token=ADMIN_TOKEN, max_upload_bytes=1_000_000) as srv:
        srv.wait_ready()
        r = _upload(srv, tar_of(bundles["v1"]))
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
        r = httpx.post(f"{srv.url}/v1/models", content=b"{}", headers={**admin(), "Content-Type": "application/json"})
        assert r.status_code == 415


def test_an_activation_verifies_in_the_front_and_parses_weights_only_in_the_workers(server, monkeypatch) -> None:
    """The front checks signature, digests and the safetensors header; the tensors are made
    where the model is built (each worker), not also in the front to be thrown away."""
    import model_store.bundle

    parsed: list[str] = []
    real = model_store.bundle.parse_weights

    def counting(data: bytes, name: str):
        parsed.append(name)
        return real(data, name)

    monkeypatch.setattr(model_store.bundle, "parse_weights", counting)
    r = httpx.post(f"{server.url}/v1/models/v2/activate", headers=admin(), json={"reason": "t"}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["active"] == "v2"
    assert parsed == []  # this process is the front; the workers are other processes


def test_weights_that_do_not_fit_are_refused_as_the_bundles_fault(server, store, keys, bundles, tmp_path) -> None:
    """Found where the weights are parsed (the workers): still a 422 `weights_invalid`, and the
    served version does not change."""
    from safetensors.torch import save_file

    from tests.utils.factories import model_state

    path = tmp_path / "misfit"
    make_bundle(path, keys[0], version="misfit", seed=3)
    save_file(model_state("resnet18"), tmp_path / "w.safetensors")
    resign_with_weights(path, (tmp_path / "w.safetensors").read_bytes(), keys[0])
    store.import_bundle(path, actor="test")
    r = httpx.post(f"{server.url}/v1/models/misfit/activate", headers=admin(), timeout=120)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "weights_invalid"
    assert httpx.get(f"{server.url}/readyz").json()["version"] == "v1"
