"""kill -9 of the service at each step of a bundle upload (POST /v1/models), by fault
injection (`model_store.faults`): the store stays valid for every reader, the upload is
logged once or not at all, and the restarted service removes what the dead one left and
takes the same upload again, logged exactly once."""

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

# (step, whether the import is committed when the kill comes there), in the order an upload passes them.
UPLOAD_STEPS = [
    ("upload.extracted", False),  # the tar unpacked in the upload folder, nothing in the store
    ("import.staged", False),  # a verified copy in the store's .staging/
    ("import.intent_written", True),  # the intent in the store's state: the next writer completes it
    ("upload.imported", True),  # stored and logged; the client never got its answer
]


def _upload(url: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models", content=body, headers={**admin(), "Content-Type": "application/x-tar"}, timeout=120
    )


@pytest.mark.parametrize(("step", "committed"), UPLOAD_STEPS)
def test_a_service_killed_mid_upload_leaves_a_valid_store_and_the_restart_cleans_up(
    store: FilesystemStore, keys, bundles, tmp_path: Path, step: str, committed: bool
) -> None:
    v3 = failing_parity_copy(bundles["v2"], tmp_path / "v3", keys[0], "v3")  # any new signed version
    body = tar_of(v3)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {
        "APP_STORE": str(store.root),
        "APP_PUBLIC_KEY": str(keys[1]),
        "APP_ADMIN_TOKEN": ADMIN_TOKEN,
        "APP_WORKERS": "1",
        "TMPDIR": str(tmpdir),
    }
    seqs_before = [e.seq for e in store.audit_log()]
    with ServiceProcess({**env, CRASH_AT: step}, tmp_path / "killed.log") as service:
        service.wait_ready()
        children = service.descendants()
        with pytest.raises(httpx.TransportError):  # the process died mid-request: no answer
            _upload(service.url, body)
        assert service.wait_killed(children) == -signal.SIGKILL

    # What any reader sees right after the kill, before anything repairs it.
    reader = FilesystemStore(store.root, keys[1])
    assert reader.active_version() == "v1"
    listed = [i.version for i in reader.versions()]
    for v in listed:
        assert reader.load(v).version == v  # no partial bundle is ever listed
    if not committed:
        assert "v3" not in listed
    log = reader.audit_log()
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    # A version is logged the moment it is visible (a committed intent may not be renamed yet).
    assert [e.to_version for e in log if e.action == "import"].count("v3") == int("v3" in listed)
    uploads = tmpdir / "damage-detect-uploads"
    assert len(list(uploads.iterdir())) == 1  # the dead process's upload folder

    # Restarted without the fault: it removes the upload folder and takes the same upload.
    with ServiceProcess(env, tmp_path / "restarted.log") as service:
        service.wait_ready()
        assert list(uploads.iterdir()) == []
        r = _upload(service.url, body)
        assert r.status_code == (200 if committed else 201), r.text
        assert r.json() == {"version": "v3", "created": not committed}

    log = store.audit_log()
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert persisted_seqs(store) == [e.seq for e in log]  # in the file itself, not only merged
    imports = [e for e in log if e.action == "import" and e.to_version == "v3"]
    assert len(imports) == 1 and imports[0].seq == len(seqs_before) + 1
    assert store.load("v3").version == "v3"
    assert debris(store) == []
