"""kill -9 of the service at steps of a bundle upload (POST /v1/models), by fault injection
(`model_store.faults`): right after each kill the store is valid for every reader and the
upload is logged once or not at all; the next start removes the dead process's upload
folder; the same uploads then go through, each logged exactly once.

One store, one chain: each start checks what the previous kill left, then is killed at
the next step (a service start costs seconds; the store's own steps are matrixed in
tests/model_store/test_store.py)."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from model_store.faults import ENV as CRASH_AT
from model_store.store import FilesystemStore
from tests.utils.archives import tar_of
from tests.utils.bundles import failing_parity_copy
from tests.utils.server import ADMIN_TOKEN, ServiceProcess, admin
from tests.utils.stores import debris, persisted_seqs

pytestmark = pytest.mark.slow

# (step, the version uploaded when killed there, whether that import is committed by then)
KILLS = [
    ("upload.extracted", "v3", False),  # the tar unpacked in the upload folder, nothing in the store
    ("import.intent_written", "v4", True),  # staged, and the intent in the store's state: the next writer completes it
    ("upload.imported", "v5", True),  # stored and logged; the client never got its answer
]


def _upload(url: str, body: bytes) -> httpx.Response:
    headers = {**admin(), "Content-Type": "application/x-tar"}
    return httpx.post(f"{url}/v1/models", content=body, headers=headers, timeout=120)


def _check_reader_view(store: FilesystemStore, keys, version: str, committed: bool) -> None:
    """What any reader sees right after a kill, before anything repairs it."""
    reader = FilesystemStore(store.root, keys[1])
    assert reader.active_version() == "v1"
    listed = [i.version for i in reader.versions()]
    for v in listed:
        assert reader.load(v).version == v  # no partial bundle is ever listed
    if not committed:
        assert version not in listed
    log = reader.audit_log()
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    # A version is logged the moment it is visible (a committed intent may not be renamed yet).
    assert [e.to_version for e in log if e.action == "import"].count(version) == int(version in listed)


def test_a_service_killed_at_each_upload_step_leaves_a_valid_store_and_the_next_start_cleans_up(
    store: FilesystemStore, keys, bundles, tmp_path: Path
) -> None:
    tars = {v: tar_of(failing_parity_copy(bundles["v2"], tmp_path / v, keys[0], v)) for _, v, _ in KILLS}
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    uploads = tmpdir / "damage-detect-uploads"
    env = {
        "APP_STORE": str(store.root),
        "APP_PUBLIC_KEY": str(keys[1]),
        "APP_ADMIN_TOKEN": ADMIN_TOKEN,
        "APP_WORKERS": "1",
        "TMPDIR": str(tmpdir),
    }
    entries_before = len(store.audit_log())
    for step, version, committed in KILLS:
        with ServiceProcess({**env, CRASH_AT: step}, tmp_path / f"{step}.log") as service:
            service.wait_ready()
            assert not uploads.exists() or list(uploads.iterdir()) == []  # the previous kill's folder is gone
            children = service.descendants()
            with pytest.raises(httpx.TransportError):  # the process died mid-request: no answer
                _upload(service.url, tars[version])
            assert service.wait_killed(children) == -signal.SIGKILL, step
        _check_reader_view(store, keys, version, committed)
        assert len(list(uploads.iterdir())) == 1  # the dead process's upload folder

    # Started without a fault: the last folder goes, and the same uploads go through once.
    with ServiceProcess(env, tmp_path / "restarted.log") as service:
        service.wait_ready()
        assert list(uploads.iterdir()) == []
        for _, version, committed in KILLS:
            r = _upload(service.url, tars[version])
            assert r.status_code == (200 if committed else 201), r.text
            assert r.json() == {"version": version, "created": not committed}

    log = store.audit_log()
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert persisted_seqs(store) == [e.seq for e in log]  # in the file itself, not only merged
    imports = [e.to_version or "" for e in log[entries_before:] if e.action == "import"]
    assert sorted(imports) == sorted(tars)  # each exactly once
    for version in tars:
        assert store.load(version).version == version
    assert debris(store) == []
