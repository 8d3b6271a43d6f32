"""Store backends: the same behaviour on the filesystem and on S3 (a real moto server on
127.0.0.1): verify-before-import, atomic pointer, rollback, proofs, exactly-once audit,
crash repair at every step, two processes at once; then what only one backend has."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError

from model_store import activation
from model_store.errors import (
    BundleTampered,
    InvalidVersionName,
    NotAStore,
    NothingToRollBack,
    ParityFailed,
    SignatureInvalid,
    StoreError,
    VersionConflict,
    VersionNotFound,
    VersionRevoked,
)
from model_store.parity import ParityProof
from model_store.signing import sign_directory
from model_store.store import FilesystemStore, open_store
from model_store.store.base import Shadow, Store
from model_store.store.s3 import S3Store
from tests.utils.bundles import failing_parity_copy, proof_for
from tests.utils.factories import make_bundle
from tests.utils.stores import (
    BUCKET,
    Crash,
    child,
    crash_at,
    debris,
    flip_stored_byte,
    persisted_seqs,
    proof_fields,
    record_steps,
    reopen,
    store_snapshot,
)

NOT_A_STORE = r"is not a model store \(create one with `python -m model_store import BUNDLE` or `init`\)"


@pytest.fixture
def store(store_factory: Callable[..., Store], bundles) -> Store:
    s = store_factory()
    for v in ("v1", "v2"):
        s.import_bundle(bundles[v], actor="test")
    return s


@pytest.fixture(scope="module")
def proofs(bundles, keys) -> dict[str, ParityProof]:
    """Parity proofs of v1 and v2, computed once: pointer moves in these tests are all I/O."""
    return {v: proof_for(bundles[v], keys[1]) for v in ("v1", "v2")}


@pytest.fixture(scope="module")
def other_v1(tmp_path_factory: pytest.TempPathFactory, keys) -> Path:
    """A signed bundle that calls itself v1 but has other weights (built once: building a model costs seconds)."""
    return make_bundle(tmp_path_factory.mktemp("other") / "v1", keys[0], version="v1", seed=7).path


@pytest.fixture
def v3(bundles, keys, tmp_path: Path) -> Path:
    """A third signed bundle (its parity does not matter to the store)."""
    return failing_parity_copy(bundles["v2"], tmp_path / "v3", keys[0], "v3")


def _log(store: Store) -> list[tuple[str, str | None, str | None, str]]:
    return [(e.action, e.from_version, e.to_version, e.actor) for e in store.audit_log()]


# --- both backends ------------------------------------------------------------------


def test_import_list_show(store: Store) -> None:
    infos = store.versions()
    assert [i.version for i in infos] == ["v1", "v2"]
    assert not any(i.active for i in infos)
    assert store.manifest("v2").version == "v2"
    assert store.active_version() is None
    assert [(e.seq, e.action, e.to_version) for e in store.audit_log()] == [(1, "import", "v1"), (2, "import", "v2")]


def test_reimporting_the_identical_bundle_is_a_no_op(store: Store, bundles) -> None:
    before = store_snapshot(store)
    assert store.import_bundle(bundles["v1"], actor="test").created is False
    assert store_snapshot(store) == before


def test_same_version_with_other_content_is_refused(store: Store, other_v1: Path) -> None:
    before = store_snapshot(store)
    with pytest.raises(VersionConflict, match="different content"):
        store.import_bundle(other_v1, actor="test")
    assert store_snapshot(store) == before


@pytest.mark.parametrize("tamper", ["flip", "other_key"])
def test_a_bundle_that_does_not_verify_is_never_imported(store: Store, bundle_copy, other_keys, tamper) -> None:
    path = bundle_copy("v1")
    # a new version name, so only verification can refuse it
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["version"] = "v9"
    (path / "manifest.json").write_text(json.dumps(manifest))
    if tamper == "other_key":
        sign_directory(path, other_keys[0])
    before = store_snapshot(store)
    with pytest.raises((BundleTampered, SignatureInvalid)):
        store.import_bundle(path, actor="test")
    assert store_snapshot(store) == before
    assert "v9" not in [i.version for i in store.versions()]


def test_an_unverifiable_bundle_does_not_even_create_the_store(store_factory, bundle_copy, other_keys) -> None:
    path = bundle_copy("v1")
    sign_directory(path, other_keys[0])
    fresh = store_factory("fresh")
    with pytest.raises(SignatureInvalid):
        fresh.import_bundle(path, actor="test")
    assert not fresh.exists()
    assert store_snapshot(fresh) == {}


def test_activate_and_rollback_follow_history(store: Store) -> None:
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
    assert persisted_seqs(store) == list(range(1, 6))


@pytest.mark.parametrize("version", ["v1\n", "../x", "v1/../v2", "", "a" * 65, ".hidden"])
def test_malformed_version_names_are_refused_everywhere(store: Store, proofs, version: str) -> None:
    with pytest.raises(InvalidVersionName):
        activation.activate(store, version, actor="x")
    with pytest.raises(InvalidVersionName):
        store.activate(version, actor="x", proof=proofs["v1"])
    with pytest.raises(InvalidVersionName):
        store.load(version)
    assert store.active_version() is None


@pytest.mark.parametrize("version", ["v7", "a" * 64])
def test_activating_an_unknown_version_is_refused(store: Store, proofs, version: str) -> None:
    with pytest.raises(VersionNotFound, match="not in the store"):
        activation.activate(store, version, actor="x")
    with pytest.raises(VersionNotFound):
        store.activate(version, actor="x", proof=proofs["v1"])
    assert store.active_version() is None


def test_a_bundle_failing_parity_never_becomes_active(store: Store, v3: Path) -> None:
    activation.activate(store, "v1", actor="x")
    store.import_bundle(v3, actor="x")
    before = store_snapshot(store)
    with pytest.raises(ParityFailed, match="v3 fails parity"):
        activation.activate(store, "v3", actor="x")
    assert store.active_version() == "v1"
    assert store_snapshot(store) == before  # no pointer move, no audit entry


def test_the_pointer_only_moves_with_a_proof_of_the_stored_bundle(store: Store, proofs) -> None:
    before = store_snapshot(store)
    with pytest.raises(StoreError, match="parity proof is for v1"):
        store.activate("v2", actor="x", proof=proofs["v1"])  # a proof of another version
    forged = ParityProof("v2", "0" * 64, 0.0)  # right name, not the stored bundle's manifest
    with pytest.raises(StoreError, match="prove the stored bundle"):
        store.activate("v2", actor="x", proof=forged)
    assert store_snapshot(store) == before
    store.activate("v2", actor="x", proof=proofs["v2"])
    assert store.active_version() == "v2"


def test_rollback_needs_a_proof_of_its_own_target(store: Store, proofs) -> None:
    store.activate("v1", actor="x", proof=proofs["v1"])
    store.activate("v2", actor="x", proof=proofs["v2"])
    with pytest.raises(StoreError, match="would roll back to v1, not v2"):
        store.rollback(actor="x", proof=proofs["v2"])
    assert store.rollback(actor="x", proof=proofs["v1"]).to_version == "v1"


def test_a_stored_bundle_tampered_in_the_store_cannot_be_loaded_or_activated(store: Store) -> None:
    flip_stored_byte(store, "v2")
    with pytest.raises(BundleTampered):
        store.load("v2")
    with pytest.raises(BundleTampered):
        activation.activate(store, "v2", actor="x")
    assert store.active_version() is None


def test_crash_between_pointer_and_audit_is_repaired_exactly_once(store: Store, proofs, monkeypatch) -> None:
    store.activate("v1", actor="x", proof=proofs["v1"])
    crash_at(monkeypatch, "commit.state_written")
    with pytest.raises(Crash):
        store.activate("v2", actor="x", reason="lost line", proof=proofs["v2"])
    monkeypatch.undo()
    assert persisted_seqs(store) == [1, 2, 3]  # the crash lost the log write...
    reader = reopen(store)
    assert reader.active_version() == "v2"
    # ...yet readers see the committed change at once, before any writer repairs the log,
    assert [(e.seq, e.to_version, e.reason) for e in reader.audit_log()][-1] == (4, "v2", "lost line")
    reader.rollback(actor="x", proof=proofs["v1"])  # and the next writer restores it before its own
    tail = [(e.seq, e.action, e.to_version, e.reason) for e in reader.audit_log()[-2:]]
    assert tail == [(4, "activate", "v2", "lost line"), (5, "rollback", "v1", "")]
    assert persisted_seqs(store) == [1, 2, 3, 4, 5]


def test_pointer_stamp_changes_on_activate_and_rollback_and_not_on_reads(store: Store, proofs) -> None:
    def read_everything() -> None:
        store.versions(), store.audit_log(), store.active_version(), store.previous_version()
        store.load("v1"), store.manifest("v2")

    stamps = [store.pointer_stamp()]
    read_everything()
    assert store.pointer_stamp() == stamps[-1]
    moves: list[Callable[[], object]] = [
        lambda: store.activate("v1", actor="x", proof=proofs["v1"]),
        lambda: store.activate("v2", actor="x", proof=proofs["v2"]),
        lambda: store.rollback(actor="x", proof=proofs["v1"]),
    ]
    for move in moves:
        move()
        stamps.append(store.pointer_stamp())
        read_everything()
        assert store.pointer_stamp() == stamps[-1]
    assert len(set(stamps)) == 4  # every move changed it
    assert reopen(store).pointer_stamp() == stamps[-1]  # a follower elsewhere sees the same


@pytest.mark.parametrize(
    "read", ["versions", "active_version", "previous_version", "audit_log", "pointer_stamp", "load", "manifest"]
)
def test_reading_a_location_without_a_store_is_refused_and_creates_nothing(store_factory, read: str) -> None:
    typo = store_factory("stor")
    args = ("v1",) if read in ("load", "manifest") else ()
    with pytest.raises(NotAStore, match=NOT_A_STORE):
        getattr(typo, read)(*args)
    assert not typo.exists()
    assert store_snapshot(typo) == {}
    if isinstance(typo, FilesystemStore):
        assert not typo.root.exists()


def test_moving_the_pointer_of_a_location_without_a_store_is_refused(store_factory, proofs) -> None:
    typo = store_factory("stor")
    with pytest.raises(NotAStore):
        typo.activate("v1", actor="x", proof=proofs["v1"])
    with pytest.raises(NotAStore):
        typo.rollback(actor="x", proof=proofs["v1"])
    assert store_snapshot(typo) == {}


def test_init_creates_an_empty_store_once(store_factory, bundles) -> None:
    s = store_factory("new")
    assert s.init() is True
    assert s.init() is False
    assert (s.versions(), s.audit_log(), s.active_version()) == ([], [], None)
    assert reopen(s).exists()
    assert s.import_bundle(bundles["v1"], actor="x").created


def test_operations_that_verify_need_the_public_key(store: Store, bundles) -> None:
    keyless = open_store(store.location) if isinstance(store, FilesystemStore) else None
    if keyless is None:
        assert isinstance(store, S3Store)
        keyless = S3Store(store.bucket, store.prefix, cache_dir=store.cache_dir)
    with pytest.raises(StoreError, match="public key"):
        keyless.import_bundle(bundles["v1"], actor="x")
    with pytest.raises(StoreError, match="public key"):
        keyless.load("v1")


# --- crash at every step: in process, then with SIGKILL in a child -------------------

# The crash points each operation passes, in order (`base.crash_point`); a repeated
# name is one entry per time it is reached. The kill tests below kill at each of them.
STEPS = {
    ("filesystem", "import"): [
        "import.staged",
        "state.temp_written",  # the intent
        "import.intent_written",
        "import.renamed",
        "state.temp_written",  # the commit
        "commit.state_written",
        "commit.audit_written",
    ],
    ("filesystem", "activate"): ["state.temp_written", "commit.state_written", "commit.audit_written"],
    ("filesystem", "rollback"): ["state.temp_written", "commit.state_written", "commit.audit_written"],
    ("s3", "import"): [
        "s3.import.uploading",  # after the first file
        "s3.import.uploaded",
        "s3.state_read",  # before the intent's compare-and-swap
        "s3.import.intent_written",
        "s3.import.marked",
        "commit.state_written",
        "commit.audit_written",
        "s3.state_read",
    ],
    ("s3", "activate"): ["s3.state_read", "commit.state_written", "commit.audit_written"],
    ("s3", "rollback"): ["s3.state_read", "commit.state_written", "commit.audit_written"],
}
# From this step on the change is committed: a kill there is completed by the next writer.
COMMIT_STEP = {"import": ("import.intent_written", "s3.import.intent_written"), "activate": ("commit.state_written",)}
COMMIT_STEP["rollback"] = COMMIT_STEP["activate"]


def _backend(store: Store) -> str:
    return "filesystem" if isinstance(store, FilesystemStore) else "s3"


def _prepare(store: Store, op: str, proofs) -> None:
    if op in ("activate", "rollback"):
        store.activate("v1", actor="setup", proof=proofs["v1"])
    if op == "rollback":
        store.activate("v2", actor="setup", proof=proofs["v2"])


def _run(store: Store, op: str, proofs, v3: Path) -> None:
    if op == "import":
        store.import_bundle(v3, actor="victim", reason="killed")
    elif op == "activate":
        store.activate("v2", actor="victim", reason="killed", proof=proofs["v2"])
    else:
        store.rollback(actor="victim", reason="killed", proof=proofs["v1"])


@pytest.mark.parametrize("op", ["import", "activate", "rollback"])
def test_every_crash_point_is_covered_by_a_kill_test(store: Store, op: str, proofs, v3: Path, monkeypatch) -> None:
    _prepare(store, op, proofs)
    seen = record_steps(monkeypatch)
    _run(store, op, proofs, v3)
    expected = STEPS[_backend(store), op]
    collapsed = [s for i, s in enumerate(expected) if i == 0 or expected[i - 1] != s]
    assert seen == collapsed


def _kill_cases() -> list[object]:
    """(backend, op, step, nth time reached, committed when killed there), one per step."""
    cases: list[object] = []
    for (backend, op), steps in STEPS.items():
        committed = False
        for i, step in enumerate(steps):
            committed = committed or step in COMMIT_STEP[op]
            nth = steps[: i + 1].count(step)
            cases.append(pytest.param(backend, op, step, nth, committed, id=f"{backend}-{op}-{step}-{nth}"))
    return cases


def _check_reader_view(store: Store, op: str, committed: bool) -> None:
    """What any reader sees right after the kill, before a writer repairs anything."""
    reader = reopen(store)
    active = reader.active_version()
    assert (
        active == {"import": None, "activate": "v2" if committed else "v1", "rollback": "v1" if committed else "v2"}[op]
    )
    listed = [i.version for i in reader.versions()]
    for v in listed:
        assert reader.load(v).version == v  # no partial bundle is ever listed
    log = reader.audit_log()
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert sorted(e.to_version or "" for e in log if e.action == "import") == sorted(listed)
    victims = [e for e in log if e.actor == "victim"]
    if op == "import":
        assert len(victims) == ("v3" in listed)
    else:
        assert len(victims) == committed  # a committed pointer move is visible in the log at once


def _check_after_next_writer(store: Store, op: str, committed: bool, v3: Path, proofs) -> None:
    writer = reopen(store)
    if op == "import":
        assert writer.import_bundle(v3, actor="after").created is not committed
    writer.activate("v1", actor="after", proof=proofs["v1"])
    log = writer.audit_log()
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert persisted_seqs(store) == [e.seq for e in log]  # repaired in the log itself, once
    victims = [e for e in log if e.actor == "victim"]
    assert len(victims) == committed
    if op == "import":
        assert [e.actor for e in log if e.to_version == "v3"] == ["victim" if committed else "after"]
        assert "v3" in [i.version for i in writer.versions()]
    moves = [e for e in log if e.action != "import"]
    for prev, cur in itertools.pairwise(moves):
        assert cur.from_version == prev.to_version
    assert debris(store) == []


@pytest.mark.slow
@pytest.mark.parametrize(("store_factory", "op", "step", "nth", "committed"), _kill_cases(), indirect=["store_factory"])
def test_a_kill_at_any_step_leaves_a_valid_store_and_each_change_logged_once(
    store: Store, op: str, step: str, nth: int, committed: bool, proofs, v3: Path, keys
) -> None:
    _prepare(store, op, proofs)
    spec = {"op": op, "kill": step, "nth": nth, "bundle": str(v3), "proofs": proof_fields(proofs)}
    spec.update({"version": "v2", "target": "v1"})
    proc = child(store, keys[1], spec)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL  # killed at the step, not finished
    _check_reader_view(store, op, committed)
    _check_after_next_writer(store, op, committed, v3, proofs)


@pytest.mark.slow
@pytest.mark.parametrize("store_factory", ["filesystem"], indirect=True)  # S3 writes whole objects
def test_a_kill_halfway_through_an_audit_line_is_repaired(store: Store, proofs, keys, v3: Path) -> None:
    assert isinstance(store, FilesystemStore)
    _prepare(store, "activate", proofs)
    spec = {"op": "activate", "version": "v2", "kill": "commit.state_written", "torn": True}
    proc = child(store, keys[1], {**spec, "proofs": proof_fields(proofs)})
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert (store.root / "audit.jsonl").read_bytes().endswith(b'"seq": ')
    _check_reader_view(store, "activate", committed=True)
    _check_after_next_writer(store, "activate", True, v3, proofs)


@pytest.mark.slow
def test_two_processes_activating_concurrently_lose_nothing(store: Store, proofs, keys) -> None:
    count = 20
    procs = [
        child(
            store,
            keys[1],
            {"op": "alternate", "actor": actor, "count": count, "cycle": cycle, "proofs": proof_fields(proofs)},
            stdin=True,
        )
        for actor, cycle in (("proc-a", ["v1", "v2"]), ("proc-b", ["v2", "v1"]))
    ]
    for p in procs:  # both are loaded and waiting: start them together
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.close()
    for p in procs:
        assert p.wait(timeout=120) == 0
        assert p.stdout is not None
        p.stdout.close()
    log = store.audit_log()
    moves = [e for e in log if e.action == "activate"]
    assert Counter(e.actor for e in moves) == {"proc-a": count, "proc-b": count}
    assert [e.seq for e in log] == list(range(1, 2 * count + 3))
    assert persisted_seqs(store) == [e.seq for e in log]
    # Each activation saw the pointer the previous one left: no writer overwrote another.
    for prev, cur in itertools.pairwise(moves):
        assert cur.from_version == prev.to_version
    for actor in ("proc-a", "proc-b"):
        assert [int(e.reason) for e in moves if e.actor == actor] == list(range(count))
    assert store.active_version() == moves[-1].to_version
    # They really overlapped: the log switches between the two more than once.
    assert sum(a.actor != b.actor for a, b in itertools.pairwise(moves)) > 1


# --- filesystem only: file modes, flock, os.replace, torn lines, random kills -------


@pytest.fixture
def fs_store(tmp_path: Path, keys, bundles) -> FilesystemStore:
    s = FilesystemStore(tmp_path / "store", keys[1])
    for v in ("v1", "v2"):
        s.import_bundle(bundles[v], actor="test")
    return s


def test_stored_bundle_files_are_read_only(fs_store: FilesystemStore) -> None:
    weights = fs_store.bundle_dir("v1") / "model.safetensors"
    assert os.stat(weights).st_mode & 0o222 == 0


def test_crash_before_pointer_replace_keeps_the_old_pointer(fs_store, proofs, monkeypatch) -> None:
    fs_store.activate("v1", actor="x", proof=proofs["v1"])

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        fs_store.activate("v2", actor="x", proof=proofs["v2"])
    monkeypatch.undo()
    reopened = FilesystemStore(fs_store.root, fs_store.public_key)
    assert reopened.active_version() == "v1"
    assert not list(fs_store.root.glob(".state.*"))  # no temp file left behind


def test_torn_audit_line_is_dropped_and_its_entry_restored(fs_store, proofs) -> None:
    fs_store.activate("v1", actor="x", proof=proofs["v1"])
    with open(fs_store.root / "audit.jsonl", "ab") as f:
        f.write(b'{"seq": 99, "act')  # a crash mid-append
    assert fs_store.audit_log()[-1].to_version == "v1"  # readers skip it
    fs_store.activate("v2", actor="x", proof=proofs["v2"])
    lines = (fs_store.root / "audit.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3, 4]


def test_a_store_written_before_pending_imports_existed_still_works(fs_store, proofs, v3: Path) -> None:
    state_file = fs_store.root / "state.json"
    state = json.loads(state_file.read_text())
    del state["pending_import"]  # the state format of earlier releases
    state_file.write_text(json.dumps(state))
    fs_store.import_bundle(v3, actor="x")
    fs_store.activate("v1", actor="x", proof=proofs["v1"])
    assert [e.seq for e in fs_store.audit_log()] == [1, 2, 3, 4]


_RANDOM_KILL_WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from model_store.activation import prove
    from model_store.store import FilesystemStore
    store = FilesystemStore(Path(sys.argv[1]), Path(sys.argv[2]))
    proofs = {v: prove(store.load(v)) for v in ("v1", "v2")}  # once: the loop is all I/O
    store.activate("v1", actor="victim", reason="warm-up", proof=proofs["v1"])
    print("ready", flush=True)
    for i in range(1, 10_000):
        v = ["v1", "v2"][i % 2]
        store.activate(v, actor="victim", reason=str(i), proof=proofs[v])
    """
)


@pytest.mark.slow
def test_killing_a_process_at_random_times_mid_activation_leaves_a_valid_pointer(fs_store, keys) -> None:
    rng = random.Random(1234)
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", _RANDOM_KILL_WORKER, str(fs_store.root), str(fs_store.public_key)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        try:
            proc.wait(timeout=rng.uniform(0.05, 0.4))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        reopened = FilesystemStore(fs_store.root, fs_store.public_key)
        assert reopened.active_version() in {"v1", "v2"}
        json.loads((fs_store.root / "state.json").read_text())  # never a half-written pointer
    # After the kills, the next writer repairs the log: contiguous, one line per change.
    final = FilesystemStore(fs_store.root, fs_store.public_key)
    final.activate("v1", actor="after", proof=proof_for(fs_store.bundle_dir("v1"), keys[1]))
    log = final.audit_log()
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert persisted_seqs(final) == [e.seq for e in log]
    assert json.loads((fs_store.root / "state.json").read_text())["seq"] == log[-1].seq
    # The kills landed while the worker was busy swapping, not before it started.
    assert sum(e.actor == "victim" and e.reason != "warm-up" for e in log) > 10
    changes = [e for e in log if e.action != "import"]
    for prev, cur in itertools.pairwise(changes):
        assert cur.from_version == prev.to_version
    assert debris(final) == []


# --- S3 only: lost races, lost responses, servers without conditions, the cache ----


@pytest.fixture
def s3_store(s3_server, tmp_path: Path, keys, bundles, request) -> S3Store:
    s = S3Store(BUCKET, f"{request.node.name}-{os.urandom(4).hex()}", keys[1], cache_dir=tmp_path / "cache")
    for v in ("v1", "v2"):
        s.import_bundle(bundles[v], actor="test")
    return s


def test_s3_a_writer_that_loses_the_race_retries_on_the_new_state(s3_store: S3Store, proofs, monkeypatch) -> None:
    s3_store.activate("v1", actor="setup", proof=proofs["v1"])
    other = reopen(s3_store)
    raced: list[str] = []

    def race(step: str) -> None:
        # After A read the state and before it swaps, B (another replica) activates v2.
        if step == "s3.state_read" and not raced:
            raced.append(step)
            other.activate("v2", actor="B", proof=proofs["v2"])

    monkeypatch.setattr("model_store.store.base.crash_point", race)
    entry = s3_store.activate("v1", actor="A", proof=proofs["v1"])
    monkeypatch.undo()
    assert (entry.from_version, entry.to_version) == ("v2", "v1")  # A re-read: B's change is its "from"
    assert _log(s3_store)[-2:] == [("activate", "v1", "v2", "B"), ("activate", "v2", "v1", "A")]
    assert s3_store.previous_version() == "v2"  # B's activation is in the history, not overwritten
    assert persisted_seqs(s3_store) == [1, 2, 3, 4, 5]


def test_s3_a_rollback_whose_target_changed_meanwhile_is_refused(s3_store: S3Store, proofs, monkeypatch) -> None:
    s3_store.activate("v1", actor="setup", proof=proofs["v1"])
    s3_store.activate("v2", actor="setup", proof=proofs["v2"])
    other = reopen(s3_store)
    raced: list[str] = []

    def race(step: str) -> None:
        if step == "s3.state_read" and not raced:
            raced.append(step)
            other.activate("v1", actor="B", proof=proofs["v1"])  # now a rollback would go to v2

    monkeypatch.setattr("model_store.store.base.crash_point", race)
    with pytest.raises(StoreError, match="would roll back to v2, not v1"):
        s3_store.rollback(actor="A", proof=proofs["v1"])
    monkeypatch.undo()
    assert s3_store.active_version() == "v1"
    assert _log(s3_store)[-1] == ("activate", "v2", "v1", "B")


def test_s3_a_commit_whose_response_was_lost_is_not_applied_twice(
    s3_server, keys, bundles, proofs, tmp_path, monkeypatch
) -> None:
    client = boto3.client("s3")
    store = S3Store(BUCKET, f"lost-response-{os.urandom(4).hex()}", keys[1], cache_dir=tmp_path, client=client)
    store.import_bundle(bundles["v1"], actor="test")
    real_put = client.put_object
    dropped: list[str] = []

    def put_then_drop_the_response(**kwargs):
        response = real_put(**kwargs)
        if kwargs["Key"].endswith("state.json") and "IfMatch" in kwargs and not dropped:
            dropped.append(kwargs["Key"])
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1")  # the write landed; the reply did not
        return response

    monkeypatch.setattr(client, "put_object", put_then_drop_the_response)
    entry = store.activate("v1", actor="x", proof=proofs["v1"])
    assert dropped and entry.seq == 2
    assert _log(store) == [("import", None, "v1", "test"), ("activate", None, "v1", "x")]
    assert persisted_seqs(store) == [1, 2]


def test_s3_a_server_that_ignores_conditional_writes_is_refused(s3_server, keys, tmp_path, monkeypatch) -> None:
    client = boto3.client("s3")
    real_put = client.put_object

    def put_ignoring_conditions(**kwargs):
        kwargs.pop("IfMatch", None)
        kwargs.pop("IfNoneMatch", None)
        return real_put(**kwargs)

    monkeypatch.setattr(client, "put_object", put_ignoring_conditions)
    store = S3Store(BUCKET, f"no-conditions-{os.urandom(4).hex()}", keys[1], cache_dir=tmp_path, client=client)
    with pytest.raises(StoreError, match="ignores conditional writes"):
        store.init()
    assert not store.exists()
    assert store_snapshot(store) == {}


def test_s3_loads_always_verify_and_the_cache_only_saves_the_download(s3_store: S3Store, monkeypatch) -> None:
    sha = next(i.manifest_sha256 for i in s3_store.versions() if i.version == "v1")
    first = s3_store.load("v1")
    assert first.path == s3_store.cache_dir / sha
    downloads = []
    real_get = s3_store._client.get_object

    def counting_get(**kwargs):
        downloads.append(kwargs["Key"])
        return real_get(**kwargs)

    monkeypatch.setattr(s3_store._client, "get_object", counting_get)
    assert s3_store.load("v1").manifest_sha256 == sha
    assert not [k for k in downloads if "/bundles/" in k]  # served from the cache
    # A damaged cached copy is noticed (verification is never skipped) and fetched again.
    weights = first.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
    again = s3_store.load("v1")
    assert [k for k in downloads if "/bundles/" in k]
    assert {k: t.sum().item() for k, t in again.state_dict.items()} == {
        k: t.sum().item() for k, t in first.state_dict.items()
    }
    # A download that a killed process abandoned is removed by the next download.
    stale = s3_store.cache_dir / ".partial-killed"
    stale.mkdir()
    os.utime(stale, (0, 0))
    s3_store.load("v2")
    assert not stale.exists()


def test_s3_a_prefix_with_objects_but_no_store_is_not_a_store(s3_server, keys, tmp_path) -> None:
    prefix = f"not-a-store-{os.urandom(4).hex()}"
    boto3.client("s3").put_object(Bucket=BUCKET, Key=f"{prefix}/notes.txt", Body=b"hello")
    store = open_store(f"s3://{BUCKET}/{prefix}", keys[1], cache_dir=tmp_path)
    with pytest.raises(NotAStore, match=NOT_A_STORE):
        store.versions()
    with pytest.raises(NotAStore):
        store.load("v1")


def test_s3_racing_imports_of_one_version_never_mix_their_bytes(
    s3_server, keys, bundles, other_v1: Path, tmp_path, monkeypatch
) -> None:
    other = other_v1
    store = S3Store(BUCKET, f"racing-{os.urandom(4).hex()}", keys[1], cache_dir=tmp_path / "cache")
    rival = reopen(store)
    raced: list[str] = []

    def race(step: str) -> None:
        # A has uploaded its files; before it records its intent, B imports other bytes as v1.
        if step == "s3.import.uploaded" and not raced:
            raced.append(step)
            assert rival.import_bundle(other, actor="B").created

    monkeypatch.setattr("model_store.store.base.crash_point", race)
    with pytest.raises(VersionConflict):
        store.import_bundle(bundles["v1"], actor="A")
    monkeypatch.undo()
    loaded = store.load("v1")  # verifies: B's bundle, whole, not a mix of the two uploads
    assert loaded.manifest.weights_sha256 == json.loads((other / "manifest.json").read_text())["weights_sha256"]
    assert _log(store) == [("import", None, "v1", "B")]


def test_s3_a_tampered_version_marker_cannot_write_outside_the_cache(s3_store: S3Store, tmp_path: Path) -> None:
    s3 = boto3.client("s3")
    key = f"{s3_store.prefix}/versions/v1.json"
    marker = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    marker["files"].append("../../escaped.txt")
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(marker).encode())
    with pytest.raises(StoreError, match="unsafe file name"):
        s3_store.load("v1")
    assert not list(tmp_path.rglob("escaped.txt"))


def test_a_shadow_is_a_store_setting_logged_like_a_pointer_move(store: Store) -> None:
    assert store.shadow() is None
    stamp = store.pointer_stamp()
    entry = store.set_shadow("v2", fraction=0.25, actor="ops", reason="candidate")
    assert store.shadow() == Shadow("v2", 0.25) and reopen(store).shadow() == Shadow("v2", 0.25)
    assert store.pointer_stamp() != stamp  # followers notice it like an activation
    assert (entry.action, entry.from_version, entry.to_version) == ("shadow", None, "v2")
    assert entry.reason == "[0.25 of traffic] candidate"
    off = store.set_shadow(None, actor="ops", reason="done")
    assert store.shadow() is None and (off.from_version, off.to_version) == ("v2", None)
    assert [e.action for e in store.audit_log()][-2:] == ["shadow", "shadow"]
    assert store.active_version() is None  # the active pointer is untouched


@pytest.mark.parametrize(
    ("version", "fraction", "error"), [("v7", 0.1, VersionNotFound), ("v1", 0.0, StoreError), ("v1", 1.5, StoreError)]
)
def test_a_shadow_must_be_stored_and_take_some_traffic(
    store: Store, version: str, fraction: float, error: type
) -> None:
    before = store.pointer_stamp()
    with pytest.raises(error):
        store.set_shadow(version, fraction=fraction, actor="ops")
    assert store.shadow() is None and store.pointer_stamp() == before


def test_a_revoked_version_is_never_activated_rolled_back_to_or_shadowed(store: Store, proofs) -> None:
    store.activate("v1", actor="ops", proof=proofs["v1"])
    store.activate("v2", actor="ops", proof=proofs["v2"])
    stamp = store.pointer_stamp()
    entry = store.revoke("v1", actor="ops", reason="misses dents on dark parcels")
    assert (entry.action, entry.to_version, entry.reason) == ("revoke", "v1", "misses dents on dark parcels")
    assert store.pointer_stamp() != stamp  # followers notice it like a pointer move
    assert set(reopen(store).revoked()) == {"v1"}
    before = store_snapshot(store)
    with pytest.raises(VersionRevoked, match=r"v1 is revoked .*misses dents on dark parcels.*refusing to activate it"):
        store.activate("v1", actor="ops", proof=proofs["v1"])
    with pytest.raises(VersionRevoked, match="refusing to activate it"):
        activation.activate(store, "v1", actor="ops")  # refused before parity is even run
    with pytest.raises(VersionRevoked, match="refusing to roll back to it"):
        store.rollback(actor="ops", proof=proofs["v1"])  # the previous version is v1
    with pytest.raises(VersionRevoked, match="refusing to roll back to it"):
        activation.rollback(store, actor="ops")
    with pytest.raises(VersionRevoked, match="refusing to put it in shadow"):
        store.set_shadow("v1", actor="ops")
    with pytest.raises(VersionRevoked, match="revoke it again"):
        store.revoke("v1", actor="ops", reason="twice")
    assert store_snapshot(store) == before and store.active_version() == "v2"
    # Un-revoking is an audited decision too; then it may come back.
    store.revoke("v1", actor="ops", reason="false alarm", undo=True)
    assert store.revoked() == {}
    assert store.rollback(actor="ops", proof=proofs["v1"]).to_version == "v1"
    assert [e.action for e in store.audit_log()][-3:] == ["revoke", "unrevoke", "rollback"]


def test_the_active_version_and_the_shadow_cannot_be_revoked(store: Store, proofs) -> None:
    store.activate("v1", actor="ops", proof=proofs["v1"])
    store.set_shadow("v2", actor="ops")
    before = store_snapshot(store)
    with pytest.raises(StoreError, match="v1 is the active version: activate another one"):
        store.revoke("v1", actor="ops", reason="bad")
    with pytest.raises(StoreError, match=r"v2 is in shadow: stop the shadow first"):
        store.revoke("v2", actor="ops", reason="bad")
    with pytest.raises(VersionNotFound):
        store.revoke("v7", actor="ops", reason="bad")
    assert store_snapshot(store) == before
