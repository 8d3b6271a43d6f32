"""The one store interface: bundle versions, the active pointer, and the audit log."""

from __future__ import annotations

import abc
import getpass
import os
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from model_store.bundle import Bundle
from model_store.errors import InvalidVersionName, StoreError
from model_store.manifest import VERSION_PATTERN, Manifest
from model_store.parity import ParityProof

Action = Literal["import", "activate", "rollback"]

# `fullmatch`, not `match`: `$` would accept a trailing newline ("v1\n").
_VERSION = re.compile(VERSION_PATTERN)


def check_version_name(version: str) -> str:
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise InvalidVersionName(f"invalid version {version!r}: use 1-64 of A-Z a-z 0-9 . _ - , starting alphanumeric")
    return version


def default_actor() -> str:
    """`user@host`, the audit log's actor when none is given."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class AuditEntry:
    """One line of the append-only audit log. For imports, `to` is the imported version."""

    seq: int
    time: str
    actor: str
    action: Action
    from_version: str | None
    to_version: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VersionInfo:
    version: str
    name: str
    created_at: str
    manifest_sha256: str
    active: bool


@dataclass(frozen=True)
class ImportResult:
    version: str
    created: bool  # False when the identical bundle was already stored


def check_proof(proof: ParityProof, version: str, manifest_sha256: str) -> None:
    """A pointer move needs parity evidence for exactly the stored bundle."""
    if proof.version != version or proof.manifest_sha256 != manifest_sha256:
        raise StoreError(
            f"the parity proof is for {proof.version} ({proof.manifest_sha256[:12]}), "
            f"not the stored {version} ({manifest_sha256[:12]}); prove the stored bundle first"
        )


class Store(abc.ABC):
    """Versions of verified bundles plus an atomically replaced active pointer.

    Moving the pointer (`activate`, `rollback`) requires a `ParityProof` of the stored
    bundle; `model_store.activation` obtains one (verify + parity) for library and CLI
    callers, the service obtains one through its serving pipeline.
    """

    location: str

    @abc.abstractmethod
    def import_bundle(self, bundle_dir: Path, *, actor: str, reason: str = "") -> ImportResult:
        """Verify and store a bundle directory; identical re-imports are no-ops."""

    @abc.abstractmethod
    def versions(self) -> list[VersionInfo]: ...

    @abc.abstractmethod
    def active_version(self) -> str | None: ...

    @abc.abstractmethod
    def previous_version(self) -> str | None:
        """The version `rollback` would activate, if any."""

    @abc.abstractmethod
    def manifest(self, version: str) -> Manifest:
        """The stored manifest, verified."""

    @abc.abstractmethod
    def load(self, version: str) -> Bundle:
        """The stored bundle, verified with the store's public key."""

    @abc.abstractmethod
    def activate(self, version: str, *, actor: str, reason: str = "", proof: ParityProof) -> AuditEntry:
        """Point the store at `version`, whose stored bundle `proof` must be about."""

    @abc.abstractmethod
    def rollback(self, *, actor: str, reason: str = "", proof: ParityProof) -> AuditEntry:
        """Re-activate the version that was active before the current one (`proof` is about it)."""

    @abc.abstractmethod
    def audit_log(self) -> list[AuditEntry]: ...
