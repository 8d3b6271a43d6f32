"""Filesystem store: the default, embedded, zero-setup backend.

```
STORE/
  state.json            the pointer state (`base.EMPTY_STATE`), replaced atomically; a
                        directory is a store when it has one
  versions/<version>/   verified bundles, read-only once imported
  audit.jsonl           append-only, one JSON object per line
  .lock                 flock: one writer at a time, across processes
  .staging/             imports in progress; never read as versions
  summaries/<replica>.json  each service replica's drift windows (`model_store.fleet`),
                        replaced atomically; not part of the pointer state
```

Nothing is created until `init` or the first import: reading a path that is not a store
(a typo) is refused with `NotAStore` instead of leaving an empty store behind.

Crash safety. Writers hold the lock, so anything half done that a writer finds was left
by a dead one, and it repairs that before its own change:
- `state.json` is only replaced with `os.replace` of a fully written, fsynced file, so a
  kill at any point leaves the old or the new pointer.
- A change's audit entry is stored in the new state (`last`) and appended to
  `audit.jsonl` after; the next writer appends it if a crash came in between (dropping a
  torn last line first), and readers merge it meanwhile. Every change is logged once.
- An import stages and verifies a copy, records its intent in the state
  (`pending_import`: who, why, when, which staged copy), renames the copy into
  `versions/`, then commits its audit entry. The next writer finishes an intent a kill
  interrupted (renames the staged copy if that had not happened, commits the entry), so
  an import that got as far as the intent is logged exactly once; one killed earlier
  left only debris. Readers show the entry as soon as the version is visible.
- The next writer removes that debris: staging directories and state temp files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from model_store.bundle import Bundle, load_bundle
from model_store.errors import BundleError, StoreError, VersionConflict, VersionNotFound
from model_store.fsutil import atomic_write, atomic_write_bytes, fsync_dir
from model_store.manifest import Manifest, parse_manifest, sha256_bytes
from model_store.parity import ParityProof
from model_store.store import base
from model_store.store.base import (
    EMPTY_STATE,
    MAX_SUMMARY_BYTES,
    REPLICA_PATTERN,
    SUMMARY_SUFFIX,
    AuditEntry,
    Canary,
    ImportResult,
    Revocation,
    Shadow,
    Store,
    VersionInfo,
    activation_changes,
    canary_entry,
    canary_of,
    check_fraction,
    check_proof,
    check_replica_name,
    check_version_name,
    committed,
    decode_summary,
    encode_summary,
    end_canary_entry,
    merge_log,
    new_entry,
    not_a_store,
    now,
    pending_import_entry,
    policy_entry,
    promote_entry,
    refuse_revoked,
    revocation_entry,
    revoked_of,
    rollback_target,
    shadow_entry,
    shadow_of,
)

STATE_FILE = "state.json"
SUMMARIES_DIR = "summaries"


class FilesystemStore(Store):
    def __init__(self, root: Path, public_key: Path | None = None) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self.public_key = Path(public_key) if public_key else None
        self._versions = self.root / "versions"
        self._staging = self.root / ".staging"
        self._state_file = self.root / STATE_FILE
        self._audit_file = self.root / "audit.jsonl"

    def __repr__(self) -> str:
        return f"FilesystemStore({str(self.root)!r})"

    # --- reading --------------------------------------------------------------------

    def exists(self) -> bool:
        return self._state_file.is_file()

    def _state(self) -> dict[str, Any]:
        try:
            raw = self._state_file.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise not_a_store(self.location) from None
        try:
            state: dict[str, Any] = json.loads(raw)
        except json.JSONDecodeError:
            # Unreachable through this code (atomic replace); someone edited it by hand.
            raise StoreError(f"{self._state_file} is not valid JSON; restore it from backup") from None
        return state

    def pointer_stamp(self) -> str:
        # The digest of the (small) state file, not its stat: every commit changes the
        # content (seq), while an inode freed by the previous replace can be reused and
        # mtime granularity can be coarser than two quick commits.
        try:
            return hashlib.sha256(self._state_file.read_bytes()).hexdigest()
        except (FileNotFoundError, NotADirectoryError):
            raise not_a_store(self.location) from None

    def active_version(self) -> str | None:
        active: str | None = self._state()["active"]
        return active

    def previous_version(self) -> str | None:
        history = self._state()["history"]
        return history[-1] if history else None

    def _version_dir(self, version: str) -> Path:
        if not self.exists():
            raise not_a_store(self.location)
        path = self._versions / check_version_name(version)
        if not path.is_dir():
            raise VersionNotFound(f"version {version!r} is not in the store at {self.root}")
        return path

    def versions(self) -> list[VersionInfo]:
        active = self.active_version()
        out = []
        paths = sorted(self._versions.iterdir()) if self._versions.is_dir() else []
        for path in paths:
            raw = (path / "manifest.json").read_bytes()
            m = parse_manifest(raw)
            out.append(VersionInfo(m.version, m.name, m.created_at.isoformat(), sha256_bytes(raw), m.version == active))
        return sorted(out, key=lambda v: (v.created_at, v.version))

    def _require_key(self) -> Path:
        if self.public_key is None:
            raise StoreError("this operation verifies bundles: give the trusted public key")
        return self.public_key

    def load(self, version: str) -> Bundle:
        bundle = load_bundle(self._version_dir(version), self._require_key())
        if bundle.version != version:
            raise BundleError(f"bundle stored as {version!r} says it is {bundle.version!r}")
        return bundle

    def manifest(self, version: str) -> Manifest:
        return self.load(version).manifest

    def bundle_dir(self, version: str) -> Path:
        return self._version_dir(version)

    def _logged_entries(self) -> list[AuditEntry]:
        entries = []
        try:
            lines = self._audit_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                entries.append(AuditEntry(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                continue  # a torn last line from a crash mid-append; repaired by the next writer
        return entries

    def audit_log(self) -> list[AuditEntry]:
        # The state first: when it says seq N, lines 1..N-1 are already in the file (each
        # writer appends the previous entry before it commits), so nothing falls between.
        state = self._state()
        entries = merge_log(self._logged_entries(), state)
        pending = pending_import_entry(state)
        if (
            pending is not None
            and pending.to_version is not None
            and (self._versions / pending.to_version).is_dir()
            and (not entries or entries[-1].seq < pending.seq)
        ):
            entries.append(pending)  # visible, so committed: the next writer logs exactly this
        return entries

    # --- writing --------------------------------------------------------------------

    def init(self) -> bool:
        if self.exists():
            return False
        for d in (self._versions, self._staging):
            d.mkdir(parents=True, exist_ok=True)
        with self._flock():
            if self.exists():  # another process created it meanwhile
                return False
            self._write_state(dict(EMPTY_STATE))
        return True

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Exclusive across processes; yields the current state after crash repair."""
        if not self.exists():  # before opening .lock, which would create a file there
            raise not_a_store(self.location)
        with self._flock():
            state = self._state()
            self._repair_audit(state)
            state = self._finish_import(state)
            self._remove_debris()
            yield state

    def _repair_audit(self, state: dict[str, Any]) -> None:
        data = self._audit_file.read_bytes() if self._audit_file.exists() else b""
        if data and not data.endswith(b"\n"):
            # Torn write: drop the partial line; its entry is still in state["last"].
            with open(self._audit_file, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
        entries = self._logged_entries()
        last_seq = entries[-1].seq if entries else 0
        if state["last"] is not None and state["seq"] > last_seq:
            self._append_audit(state["last"])

    def _finish_import(self, state: dict[str, Any]) -> dict[str, Any]:
        """Complete the import a dead writer recorded the intent of; the state after it."""
        pending = state.get("pending_import")
        if not pending:
            return state
        target = self._versions / pending["version"]
        staged = self._staging / pending["staging"]
        if not target.is_dir():
            if not staged.is_dir():  # not reachable through this code; do not log a bundle we lack
                return self._write_state({**state, "pending_import": None})
            os.rename(staged, target)  # verified and made read-only before the intent was written
            fsync_dir(self._versions)
        entry = pending_import_entry(state)
        assert entry is not None
        return self._commit(state, entry, pending_import=None)

    def _remove_debris(self) -> None:
        """Staged copies and state temp files a killed writer left (we hold the lock: all stale)."""
        if self._staging.is_dir():
            for path in self._staging.iterdir():
                _remove_tree(path)
        for tmp in self.root.glob(f".{STATE_FILE}.*.tmp"):
            tmp.unlink(missing_ok=True)

    def _write_state(self, state: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(state, indent=2, sort_keys=True).encode()

        def write(f: IO[bytes]) -> None:
            f.write(data)
            base.crash_point("state.temp_written")  # a kill here leaves a temp file as debris

        atomic_write(self._state_file, write)
        return state

    def _append_audit(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        fd = os.open(self._audit_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _commit(self, state: dict[str, Any], entry: AuditEntry, **changes: Any) -> dict[str, Any]:
        new_state = self._write_state(committed(state, entry, **changes))
        base.crash_point("commit.state_written")
        self._append_audit(entry.to_dict())
        base.crash_point("commit.audit_written")
        return new_state

    def import_bundle(self, bundle_dir: Path, *, actor: str, reason: str = "") -> ImportResult:
        key = self._require_key()
        incoming = load_bundle(Path(bundle_dir), key)  # verify before anything is copied or created
        version = check_version_name(incoming.version)
        self.init()
        with self._locked() as state:
            target = self._versions / version
            if target.exists():
                stored = load_bundle(target, key)
                if _same_content(stored, incoming):
                    return ImportResult(version, created=False)
                raise VersionConflict(
                    f"version {version!r} is already stored with different content; give the new bundle a new version"
                )
            staging = self._staging / f"{version}.{uuid.uuid4().hex}"
            try:
                shutil.copytree(bundle_dir, staging, symlinks=True)
                load_bundle(staging, key)  # the copy is what we keep: verify it, not the source
                _make_read_only(staging)
            except BaseException:
                _remove_tree(staging)
                raise
            base.crash_point("import.staged")
            pending = {"version": version, "actor": actor, "reason": reason, "time": now(), "staging": staging.name}
            state = self._write_state({**state, "pending_import": pending})
            base.crash_point("import.intent_written")
            os.rename(staging, target)
            fsync_dir(self._versions)
            base.crash_point("import.renamed")
            entry = pending_import_entry(state)
            assert entry is not None
            self._commit(state, entry, pending_import=None)
        return ImportResult(version, created=True)

    def _stored_manifest_sha256(self, version: str) -> str:
        return sha256_bytes((self._version_dir(version) / "manifest.json").read_bytes())

    def activate(self, version: str, *, actor: str, reason: str = "", proof: ParityProof) -> AuditEntry:
        with self._locked() as state:
            refuse_revoked(revoked_of(state), version, "activate it")
            check_proof(proof, version, self._stored_manifest_sha256(version))
            entry = new_entry(state, "activate", actor, reason, state["active"], version)
            self._commit(state, entry, **activation_changes(state, version))
            return entry

    def rollback(self, *, actor: str, reason: str = "", proof: ParityProof) -> AuditEntry:
        with self._locked() as state:
            target, changes = rollback_target(state, proof)
            check_proof(proof, target, self._stored_manifest_sha256(target))
            entry = new_entry(state, "rollback", actor, reason, state["active"], target)
            self._commit(state, entry, **changes)
            return entry

    def shadow(self) -> Shadow | None:
        return shadow_of(self._state())

    def set_shadow(self, version: str | None, *, fraction: float = 0.1, actor: str, reason: str = "") -> AuditEntry:
        check_fraction(fraction)
        with self._locked() as state:
            if version is not None:
                self._version_dir(version)  # it must be stored
                refuse_revoked(revoked_of(state), version, "put it in shadow")
            entry, changes = shadow_entry(state, version, fraction, actor, reason)
            self._commit(state, entry, **changes)
            return entry

    def canary(self) -> Canary | None:
        return canary_of(self._state())

    def set_canary(
        self,
        version: str,
        *,
        stations: tuple[str, ...] | list[str] = (),
        fraction: float = 0.0,
        actor: str,
        reason: str = "",
        proof: ParityProof,
    ) -> AuditEntry:
        with self._locked() as state:
            check_proof(proof, version, self._stored_manifest_sha256(version))
            entry, changes = canary_entry(state, version, tuple(stations), fraction, actor, reason)
            self._commit(state, entry, **changes)
            return entry

    def end_canary(
        self, *, actor: str, reason: str = "", expect_seq: int | None = None, evidence: dict[str, Any] | None = None
    ) -> AuditEntry:
        # No proof: the canary's stations return to the active version, proven when activated.
        with self._locked() as state:
            entry, changes = end_canary_entry(state, actor, reason, expect_seq, evidence)
            self._commit(state, entry, **changes)
            return entry

    def promote_canary(
        self,
        *,
        actor: str,
        reason: str = "",
        proof: ParityProof,
        expect_seq: int | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> AuditEntry:
        with self._locked() as state:
            entry, changes = promote_entry(state, proof, actor, reason, expect_seq, evidence)
            assert entry.to_version is not None
            check_proof(proof, entry.to_version, self._stored_manifest_sha256(entry.to_version))
            self._commit(state, entry, **changes)
            return entry

    def policy(self) -> dict[str, Any] | None:
        policy: dict[str, Any] | None = self._state().get("policy")
        return policy

    def set_policy(self, policy: dict[str, Any], *, actor: str, reason: str = "") -> AuditEntry:
        with self._locked() as state:
            entry, changes = policy_entry(state, policy, actor, reason)
            self._commit(state, entry, **changes)
            return entry

    def revoked(self) -> dict[str, Revocation]:
        return revoked_of(self._state())

    def revoke(self, version: str, *, actor: str, reason: str, undo: bool = False) -> AuditEntry:
        with self._locked() as state:
            self._version_dir(version)  # it must be stored
            entry, changes = revocation_entry(state, version, undo=undo, actor=actor, reason=reason)
            self._commit(state, entry, **changes)
            return entry

    # --- replicas' window summaries (model_store.fleet) --------------------------------
    # STORE/summaries/<replica>.json, each replaced atomically; outside the state, so
    # writing one never changes `pointer_stamp`. No lock: each replica writes only its own.

    def write_summary(self, replica: str, summary: dict[str, Any]) -> None:
        name = check_replica_name(replica)
        data = encode_summary(summary)
        if not self.exists():  # never create a store's directories at a typo
            raise not_a_store(self.location)
        atomic_write_bytes(self.root / SUMMARIES_DIR / f"{name}{SUMMARY_SUFFIX}", data)

    def summaries(self, *, newer_than: float | None = None) -> list[dict[str, Any]]:
        if not self.exists():
            raise not_a_store(self.location)
        folder = self.root / SUMMARIES_DIR
        out = []
        for path in sorted(folder.glob(f"*{SUMMARY_SUFFIX}")) if folder.is_dir() else []:
            name = path.name.removesuffix(SUMMARY_SUFFIX)
            if not REPLICA_PATTERN.fullmatch(name) or not path.is_file():  # temp files, a FIFO: never opened
                continue
            try:
                stat = path.stat()
                if newer_than is not None and stat.st_mtime < newer_than:
                    continue
                if stat.st_size > MAX_SUMMARY_BYTES:
                    out.append(decode_summary(name, None, stat.st_size))
                    continue
                with open(path, "rb") as f:
                    data = f.read(MAX_SUMMARY_BYTES + 1)  # bounded even if it grew since the stat
            except FileNotFoundError:
                continue
            out.append(decode_summary(name, data))
        return out


def _same_content(a: Bundle, b: Bundle) -> bool:
    return (
        a.manifest_sha256 == b.manifest_sha256
        and a.manifest.weights_sha256 == b.manifest.weights_sha256
        and a.references == b.references
    )


def _make_read_only(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            os.chmod(Path(dirpath) / name, 0o444)


def _remove_tree(path: Path) -> None:
    # Read-only files go too: unlinking needs write permission on the directory only.
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
