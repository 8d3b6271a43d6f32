"""Model store backends behind one interface (`Store`)."""

from __future__ import annotations

from pathlib import Path

from model_store.errors import StoreError
from model_store.store.base import AuditEntry, ImportResult, Store, VersionInfo
from model_store.store.filesystem import FilesystemStore

__all__ = ["AuditEntry", "FilesystemStore", "ImportResult", "Store", "VersionInfo", "open_store"]


def open_store(location: str | Path, public_key: Path | None = None) -> Store:
    """A store from its location: a directory path (S3 URLs come with the S3 backend)."""
    loc = str(location)
    if loc.startswith("s3://"):
        raise StoreError(f"{loc}: S3 store locations are not supported by this release")
    return FilesystemStore(Path(loc), public_key)
