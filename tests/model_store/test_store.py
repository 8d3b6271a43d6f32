"""Filesystem store: verify-before-import, atomic pointer, rollback, audit, locking, crashes."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from model_store.errors import (
    BundleTampered,
    NothingToRollBack,
    ParityFailed,
    SignatureInvalid,
    StoreError,
    VersionConflict,
    VersionNotFound,
)
from model_store.signing import sign_directory
from model_store.store import FilesystemStore, open_store
from tests.utils.factories import make_bundle


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"
    }


@pytest.fixture
def store(tmp_path: Path, keys, bundles) -> FilesystemStore:
    s = FilesystemStore(tmp_path / "store", keys[1])
    for v in ("v1", "v2"):
        s.import_bundle(bundles[v], actor="test")
    return s


def test_import_list_show(store: FilesystemStore) -> None:
    infos = store.versions()
    assert [i.version for i in infos] == ["v1", "v2"]
    assert not any(i.active for i in infos)
    assert store.manifest("v2").version == "v2"
    assert store.active_version() is None


def test_stored_bundle_files_are_read_only(store: FilesystemStore) -> None:
    weights = store.bundle_dir("v1") / "model.safetensors"
    assert os.stat(weights).st_mode & 0o222 == 0


def test_reimporting_the_identical_bundle_is_a_no_op(store: FilesystemStore, bundles) -> None:
    before = _snapshot(store.root)
    result = store.import_bundle(bundles["v1"], actor="test")
    assert result.created is False
    assert _snapshot(store.root) == before


def test_same_version_with_other_content_is_refused(store, tmp_path: Path, keys) -> None:
    other = make_bundle(tmp_path / "other-v1", keys[0], version="v1", seed=7).path
    before = _snapshot(store.root)
    with pytest.raises(VersionConflict, match="different content"):
        store.import_bundle(other, actor="test")
    assert _snapshot(store.root) == before


@pytest.mark.parametrize("tamper", ["flip", "other_key"])
def test_a_bundle_that_does_not_verify_is_never_imported(store, bundle_copy, other_keys, tamper) -> None:
    path = bundle_copy("v1")
    # a new version name, so only verification can refuse it
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["version"] = "v9"
    (path / "manifest.json").write_text(json.dumps(manifest))
    if tamper == "other_key":
        sign_directory(path, other_keys[0])
    before = _snapshot(store.root)
    with pytest.raises((BundleTampered, SignatureInvalid)):
        store.import_bundle(path, actor="test")
    assert _snapshot(store.root) == before
    assert not (store.root / "versions" / "v9").exists()


def test_activate_and_rollback_follow_history(store: FilesystemStore) -> None:
    store.activate("v1", actor="alice", reason="first")
    store.activate("v2", actor="bob", reason="better recall")
    assert store.active_version() == "v2"
    entry = store.rollback(actor="carol", reason="v2 misbehaves")
    assert (entry.from_version, entry.to_version) == ("v2", "v1")
    assert store.active_version() == "v1"
    with pytest.raises(NothingToRollBack):
        store.rollback(actor="carol")
    log = [(e.action, e.actor, e.from_version, e.to_version, e.reason) for e in store.audit_log()]
    assert log[-3:] == [
        ("activate", "alice", None, "v1", "first"),
        ("activate", "bob", "v1", "v2", "better recall"),
        ("rollback", "carol", "v2", "v1", "v2 misbehaves"),
    ]
    assert [e.seq for e in store.audit_log()] == list(range(1, 6))


def test_activating_unknown_or_malformed_versions_is_refused(store: FilesystemStore) -> None:
    with pytest.raises(VersionNotFound):
        store.activate("v7", actor="x")
    with pytest.raises(StoreError, match="invalid version"):
        store.activate("../etc", actor="x")
    assert store.active_version() is None


def test_a_failing_activation_check_leaves_the_pointer_alone(store: FilesystemStore) -> None:
    store.activate("v1", actor="x")

    def parity_fails(bundle) -> None:  # type: ignore[no-untyped-def]
        raise ParityFailed(f"{bundle.version} fails parity")

    with pytest.raises(ParityFailed):
        store.activate("v2", actor="x", check=parity_fails)
    assert store.active_version() == "v1"
    assert store.audit_log()[-1].to_version == "v1"


def test_a_stored_bundle_tampered_on_disk_cannot_be_activated(store: FilesystemStore) -> None:
    weights = store.bundle_dir("v2") / "model.safetensors"
    os.chmod(weights, 0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleTampered):
        store.activate("v2", actor="x")
    assert store.active_version() is None


def test_crash_before_pointer_replace_keeps_the_old_pointer(store, monkeypatch) -> None:
    store.activate("v1", actor="x")

    def crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.activate("v2", actor="x")
    monkeypatch.undo()
    reopened = FilesystemStore(store.root, store.public_key)
    assert reopened.active_version() == "v1"
    assert not list(store.root.glob(".state.*"))  # no temp file left behind


def test_crash_between_pointer_and_audit_is_repaired_exactly_once(store, monkeypatch) -> None:
    store.activate("v1", actor="x")
    monkeypatch.setattr(FilesystemStore, "_append_audit", lambda self, entry: None)
    store.activate("v2", actor="x", reason="lost line")
    monkeypatch.undo()
    assert store.audit_log()[-1].to_version == "v1"  # the crash lost the line...
    reopened = FilesystemStore(store.root, store.public_key)
    reopened.rollback(actor="x")  # ...and the next writer restores it before its own
    tail = [(e.seq, e.action, e.to_version, e.reason) for e in reopened.audit_log()[-2:]]
    assert tail == [(4, "activate", "v2", "lost line"), (5, "rollback", "v1", "")]


def test_torn_audit_line_is_dropped_and_its_entry_restored(store) -> None:
    store.activate("v1", actor="x")
    with open(store.root / "audit.jsonl", "ab") as f:
        f.write(b'{"seq": 99, "act')  # a crash mid-append
    assert store.audit_log()[-1].to_version == "v1"  # readers skip it
    store.activate("v2", actor="x")
    lines = (store.root / "audit.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3, 4]


_WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from model_store.store import FilesystemStore
    store = FilesystemStore(Path(sys.argv[1]), Path(sys.argv[2]))
    actor, count = sys.argv[3], int(sys.argv[4])
    store.activate("v1", actor=actor, reason="warm-up")  # imports done: the loop is all I/O
    print("ready", flush=True)
    for i in range(1, count):
        store.activate(["v1", "v2"][i % 2], actor=actor, reason=str(i))
    """
)


def _worker(store: FilesystemStore, actor: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(store.root), str(store.public_key), actor, str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_concurrent_activations_from_two_processes_are_serialised(store: FilesystemStore) -> None:
    procs = [_worker(store, actor, 25) for actor in ("proc-a", "proc-b")]
    for p in procs:
        assert p.wait(timeout=120) == 0
        assert p.stdout is not None
        p.stdout.close()
    log = store.audit_log()
    activations = [e for e in log if e.action == "activate"]
    assert len(activations) == 50
    assert [e.seq for e in log] == list(range(1, 53))
    # Serialised: each activation saw the pointer the previous one left.
    for prev, cur in itertools.pairwise(activations):
        assert cur.from_version == prev.to_version
    assert store.active_version() == activations[-1].to_version
    assert json.loads((store.root / "state.json").read_text())["seq"] == 52


def test_killing_a_process_mid_activation_leaves_a_valid_pointer(store: FilesystemStore) -> None:
    rng = random.Random(1234)
    for _ in range(5):
        proc = _worker(store, "victim", 10_000)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        try:
            proc.wait(timeout=rng.uniform(0.05, 0.4))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        reopened = FilesystemStore(store.root, store.public_key)
        assert reopened.active_version() in {"v1", "v2"}
        json.loads((store.root / "state.json").read_text())  # never a half-written pointer
    # After the kills, the next writer repairs the log: contiguous, one line per change.
    final = FilesystemStore(store.root, store.public_key)
    final.activate("v1", actor="after")
    log = final.audit_log()
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert json.loads((store.root / "state.json").read_text())["seq"] == log[-1].seq
    # The kills landed while the worker was busy swapping, not before it started.
    assert sum(e.actor == "victim" and e.reason != "warm-up" for e in log) > 10
    changes = [e for e in log if e.action != "import"]
    for prev, cur in itertools.pairwise(changes):
        assert cur.from_version == prev.to_version


def test_operations_that_verify_need_the_public_key(tmp_path: Path, bundles) -> None:
    s = open_store(tmp_path / "s")
    with pytest.raises(StoreError, match="public key"):
        s.import_bundle(bundles["v1"], actor="x")
