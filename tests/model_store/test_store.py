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

from model_store import activation
from model_store.errors import (
    BundleTampered,
    NothingToRollBack,
    ParityFailed,
    SignatureInvalid,
    StoreError,
    VersionConflict,
    VersionNotFound,
)
from model_store.parity import ParityProof
from model_store.signing import sign_directory
from model_store.store import FilesystemStore, open_store
from tests.utils.bundles import failing_parity_copy, proof_for, snapshot
from tests.utils.factories import make_bundle


@pytest.fixture
def store(tmp_path: Path, keys, bundles) -> FilesystemStore:
    s = FilesystemStore(tmp_path / "store", keys[1])
    for v in ("v1", "v2"):
        s.import_bundle(bundles[v], actor="test")
    return s


@pytest.fixture(scope="module")
def proofs(bundles, keys) -> dict[str, ParityProof]:
    """Parity proofs of v1 and v2, computed once: pointer moves in these tests are all I/O."""
    return {v: proof_for(bundles[v], keys[1]) for v in ("v1", "v2")}


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
    before = snapshot(store.root)
    result = store.import_bundle(bundles["v1"], actor="test")
    assert result.created is False
    assert snapshot(store.root) == before


def test_same_version_with_other_content_is_refused(store, tmp_path: Path, keys) -> None:
    other = make_bundle(tmp_path / "other-v1", keys[0], version="v1", seed=7).path
    before = snapshot(store.root)
    with pytest.raises(VersionConflict, match="different content"):
        store.import_bundle(other, actor="test")
    assert snapshot(store.root) == before


@pytest.mark.parametrize("tamper", ["flip", "other_key"])
def test_a_bundle_that_does_not_verify_is_never_imported(store, bundle_copy, other_keys, tamper) -> None:
    path = bundle_copy("v1")
    # a new version name, so only verification can refuse it
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["version"] = "v9"
    (path / "manifest.json").write_text(json.dumps(manifest))
    if tamper == "other_key":
        sign_directory(path, other_keys[0])
    before = snapshot(store.root)
    with pytest.raises((BundleTampered, SignatureInvalid)):
        store.import_bundle(path, actor="test")
    assert snapshot(store.root) == before
    assert not (store.root / "versions" / "v9").exists()


def test_activate_and_rollback_follow_history(store: FilesystemStore) -> None:
    activation.activate(store, "v1", actor="alice", reason="first")
    activation.activate(store, "v2", actor="bob", reason="better recall")
    assert store.active_version() == "v2"
    entry = activation.rollback(store, actor="carol", reason="v2 misbehaves")
    assert (entry.from_version, entry.to_version) == ("v2", "v1")
    assert store.active_version() == "v1"
    with pytest.raises(NothingToRollBack):
        activation.rollback(store, actor="carol")
    log = [(e.action, e.actor, e.from_version, e.to_version, e.reason) for e in store.audit_log()]
    assert log[-3:] == [
        ("activate", "alice", None, "v1", "first"),
        ("activate", "bob", "v1", "v2", "better recall"),
        ("rollback", "carol", "v2", "v1", "v2 misbehaves"),
    ]
    assert [e.seq for e in store.audit_log()] == list(range(1, 6))


@pytest.mark.parametrize("version", ["v7", "../etc", "v1\n"])
def test_activating_unknown_or_malformed_versions_is_refused(store: FilesystemStore, proofs, version: str) -> None:
    with pytest.raises((VersionNotFound, StoreError)):
        activation.activate(store, version, actor="x")
    with pytest.raises((VersionNotFound, StoreError)):
        store.activate(version, actor="x", proof=proofs["v1"])
    assert store.active_version() is None


def test_a_bundle_failing_parity_never_becomes_active(store: FilesystemStore, bundles, keys, tmp_path) -> None:
    activation.activate(store, "v1", actor="x")
    store.import_bundle(failing_parity_copy(bundles["v2"], tmp_path / "v3", keys[0], "v3"), actor="x")
    before = snapshot(store.root)
    with pytest.raises(ParityFailed, match="v3 fails parity"):
        activation.activate(store, "v3", actor="x")
    assert store.active_version() == "v1"
    assert snapshot(store.root) == before  # no pointer move, no audit line


def test_the_pointer_only_moves_with_a_proof_of_the_stored_bundle(store: FilesystemStore, proofs) -> None:
    before = snapshot(store.root)
    with pytest.raises(StoreError, match="parity proof is for v1"):
        store.activate("v2", actor="x", proof=proofs["v1"])  # a proof of another version
    forged = ParityProof("v2", "0" * 64, 0.0)  # right name, not the stored bundle's manifest
    with pytest.raises(StoreError, match="prove the stored bundle"):
        store.activate("v2", actor="x", proof=forged)
    assert snapshot(store.root) == before
    store.activate("v2", actor="x", proof=proofs["v2"])
    assert store.active_version() == "v2"


def test_rollback_needs_a_proof_of_its_own_target(store: FilesystemStore, proofs) -> None:
    store.activate("v1", actor="x", proof=proofs["v1"])
    store.activate("v2", actor="x", proof=proofs["v2"])
    with pytest.raises(StoreError, match="would roll back to v1, not v2"):
        store.rollback(actor="x", proof=proofs["v2"])
    assert store.rollback(actor="x", proof=proofs["v1"]).to_version == "v1"


def test_a_stored_bundle_tampered_on_disk_cannot_be_activated(store: FilesystemStore) -> None:
    weights = store.bundle_dir("v2") / "model.safetensors"
    os.chmod(weights, 0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleTampered):
        activation.activate(store, "v2", actor="x")
    assert store.active_version() is None


def test_crash_before_pointer_replace_keeps_the_old_pointer(store, proofs, monkeypatch) -> None:
    store.activate("v1", actor="x", proof=proofs["v1"])

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.activate("v2", actor="x", proof=proofs["v2"])
    monkeypatch.undo()
    reopened = FilesystemStore(store.root, store.public_key)
    assert reopened.active_version() == "v1"
    assert not list(store.root.glob(".state.*"))  # no temp file left behind


def test_crash_between_pointer_and_audit_is_repaired_exactly_once(store, proofs, monkeypatch) -> None:
    store.activate("v1", actor="x", proof=proofs["v1"])
    monkeypatch.setattr(FilesystemStore, "_append_audit", lambda self, entry: None)
    store.activate("v2", actor="x", reason="lost line", proof=proofs["v2"])
    monkeypatch.undo()
    assert store.audit_log()[-1].to_version == "v1"  # the crash lost the line...
    reopened = FilesystemStore(store.root, store.public_key)
    reopened.rollback(actor="x", proof=proofs["v1"])  # ...and the next writer restores it before its own
    tail = [(e.seq, e.action, e.to_version, e.reason) for e in reopened.audit_log()[-2:]]
    assert tail == [(4, "activate", "v2", "lost line"), (5, "rollback", "v1", "")]


def test_torn_audit_line_is_dropped_and_its_entry_restored(store, proofs) -> None:
    store.activate("v1", actor="x", proof=proofs["v1"])
    with open(store.root / "audit.jsonl", "ab") as f:
        f.write(b'{"seq": 99, "act')  # a crash mid-append
    assert store.audit_log()[-1].to_version == "v1"  # readers skip it
    store.activate("v2", actor="x", proof=proofs["v2"])
    lines = (store.root / "audit.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3, 4]


_WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from model_store.activation import prove
    from model_store.store import FilesystemStore
    store = FilesystemStore(Path(sys.argv[1]), Path(sys.argv[2]))
    actor, count = sys.argv[3], int(sys.argv[4])
    proofs = {v: prove(store.load(v)) for v in ("v1", "v2")}  # once: the loop is all I/O
    store.activate("v1", actor=actor, reason="warm-up", proof=proofs["v1"])
    print("ready", flush=True)
    for i in range(1, count):
        v = ["v1", "v2"][i % 2]
        store.activate(v, actor=actor, reason=str(i), proof=proofs[v])
    """
)


def _worker(store: FilesystemStore, actor: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(store.root), str(store.public_key), actor, str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
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


@pytest.mark.slow
def test_killing_a_process_mid_activation_leaves_a_valid_pointer(store: FilesystemStore, keys) -> None:
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
    final.activate("v1", actor="after", proof=proof_for(store.bundle_dir("v1"), keys[1]))
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
