"""The one store interface: bundle versions, the active pointer, and the audit log."""

from __future__ import annotations

import abc
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from model_store.bundle import Bundle
from model_store.errors import InvalidVersionName
from model_store.manifest import VERSION_PATTERN, Manifest

Action = Literal["import", "activate", "rollback"]
# Run on a verified bundle before it becomes active (the parity check); raise to refuse.
ActivationCheck = Callable[[Bundle], None]

_VERSION = re.compile(VERSION_PATTERN)


def check_version_name(version: str) -> str:
    if not _VERSION.match(version):
        raise InvalidVersionName(f"invalid version {version!r}: use 1-64 of A-Z a-z 0-9 . _ - , starting alphanumeric")
    return version


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


class Store(abc.ABC):
    """Versions of verified bundles plus an atomically replaced active pointer."""

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
    def activate(
        self, version: str, *, actor: str, reason: str = "", check: ActivationCheck | None = None
    ) -> AuditEntry: ...

    @abc.abstractmethod
    def rollback(self, *, actor: str, reason: str = "", check: ActivationCheck | None = None) -> AuditEntry:
        """Re-activate the version that was active before the current one."""

    @abc.abstractmethod
    def audit_log(self) -> list[AuditEntry]: ...
