"""Filesystem store: the default, embedded, zero-setup backend.

```
STORE/
  versions/<version>/   verified bundles, read-only once imported
  state.json            {"active", "history", "seq", "last"}; replaced atomically
  audit.jsonl           append-only, one JSON object per line
  .lock                 flock: one writer at a time, across processes
  .staging/             imports in progress; never read as versions
```

Crash safety: `state.json` is only ever replaced with `os.replace` of a fully written,
fsynced file, so a kill at any point leaves the old or the new pointer. The audit entry
is stored inside the new state first and appended to `audit.jsonl` after; the next writer
appends it if a crash came in between, so every pointer change is logged exactly once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model_store.bundle import Bundle, load_bundle
from model_store.errors import (
    BundleError,
    NothingToRollBack,
    StoreError,
    VersionConflict,
    VersionNotFound,
)
from model_store.fsutil import atomic_write_bytes, fsync_dir
from model_store.manifest import Manifest, parse_manifest, sha256_bytes
from model_store.parity import ParityProof
from model_store.store.base import (
    Action,
    AuditEntry,
    ImportResult,
    Store,
    VersionInfo,
    check_proof,
    check_version_name,
)

_EMPTY_STATE: dict[str, Any] = {"active": None, "history": [], "seq": 0, "last": None}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class FilesystemStore(Store):
    def __init__(self, root: Path, public_key: Path | None = None) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self.public_key = Path(public_key) if public_key else None
        self._versions = self.root / "versions"
        self._staging = self.root / ".staging"
        self._state_file = self.root / "state.json"
        self._audit_file = self.root / "audit.jsonl"
        for d in (self._versions, self._staging):
            d.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FilesystemStore({str(self.root)!r})"

    # --- reading --------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        try:
            raw = self._state_file.read_bytes()
        except FileNotFoundError:
            return dict(_EMPTY_STATE)
        try:
            state: dict[str, Any] = json.loads(raw)
        except json.JSONDecodeError:
            # Unreachable through this code (atomic replace); someone edited it by hand.
            raise StoreError(f"{self._state_file} is not valid JSON; restore it from backup") from None
        return state

    def active_version(self) -> str | None:
        active: str | None = self._state()["active"]
        return active

    def previous_version(self) -> str | None:
        history = self._state()["history"]
        return history[-1] if history else None

    def _version_dir(self, version: str) -> Path:
        path = self._versions / check_version_name(version)
        if not path.is_dir():
            raise VersionNotFound(f"version {version!r} is not in the store at {self.root}")
        return path

    def versions(self) -> list[VersionInfo]:
        active = self.active_version()
        out = []
        for path in sorted(self._versions.iterdir()):
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

    def audit_log(self) -> list[AuditEntry]:
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

    # --- writing --------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Exclusive across processes; yields the current state after crash repair."""
        with open(self.root / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self._state()
                self._repair_audit(state)
                yield state
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _repair_audit(self, state: dict[str, Any]) -> None:
        data = self._audit_file.read_bytes() if self._audit_file.exists() else b""
        if data and not data.endswith(b"\n"):
            # Torn write: drop the partial line; its entry is still in state["last"].
            with open(self._audit_file, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
        entries = self.audit_log()
        last_seq = entries[-1].seq if entries else 0
        if state["last"] is not None and state["seq"] > last_seq:
            self._append_audit(state["last"])

    def _append_audit(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        fd = os.open(self._audit_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _commit(
        self,
        state: dict[str, Any],
        action: Action,
        actor: str,
        reason: str,
        from_version: str | None,
        to_version: str | None,
        **changes: Any,
    ) -> AuditEntry:
        entry = AuditEntry(
            seq=state["seq"] + 1,
            time=_now(),
            actor=actor,
            action=action,
            from_version=from_version,
            to_version=to_version,
            reason=reason,
        )
        new_state = {**state, **changes, "seq": entry.seq, "last": entry.to_dict()}
        atomic_write_bytes(self._state_file, json.dumps(new_state, indent=2, sort_keys=True).encode())
        self._append_audit(entry.to_dict())
        return entry

    def import_bundle(self, bundle_dir: Path, *, actor: str, reason: str = "") -> ImportResult:
        key = self._require_key()
        incoming = load_bundle(Path(bundle_dir), key)  # verify before anything is copied
        version = check_version_name(incoming.version)
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
                os.rename(staging, target)
                fsync_dir(self._versions)
            except BaseException:
                if staging.exists():
                    _make_writable(staging)
                    shutil.rmtree(staging, ignore_errors=True)
                raise
            self._commit(state, "import", actor, reason, None, version)
        return ImportResult(version, created=True)

    def _stored_manifest_sha256(self, version: str) -> str:
        return sha256_bytes((self._version_dir(version) / "manifest.json").read_bytes())

    def activate(self, version: str, *, actor: str, reason: str = "", proof: ParityProof) -> AuditEntry:
        with self._locked() as state:
            check_proof(proof, version, self._stored_manifest_sha256(version))
            current = state["active"]
            history = list(state["history"])
            if current is not None and current != version:
                history.append(current)
            return self._commit(state, "activate", actor, reason, current, version, active=version, history=history)

    def rollback(self, *, actor: str, reason: str = "", proof: ParityProof) -> AuditEntry:
        with self._locked() as state:
            history = list(state["history"])
            if not history:
                raise NothingToRollBack("no earlier active version to roll back to")
            target = history.pop()
            if proof.version != target:
                raise StoreError(
                    f"the store would roll back to {target}, not {proof.version}: its history changed; try again"
                )
            check_proof(proof, target, self._stored_manifest_sha256(target))
            return self._commit(
                state,
                "rollback",
                actor,
                reason,
                state["active"],
                target,
                active=target,
                history=history,
            )


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


def _make_writable(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            os.chmod(Path(dirpath) / name, 0o644)
