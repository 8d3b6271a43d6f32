"""Model store backends behind one interface (`Store`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_store.store.base import AuditEntry, ImportResult, Store, VersionInfo
from model_store.store.filesystem import FilesystemStore

__all__ = ["AuditEntry", "FilesystemStore", "ImportResult", "Store", "VersionInfo", "open_store"]


def open_store(location: str | Path, public_key: Path | None = None, **options: Any) -> Store:
    """A store from its location: `s3://bucket/prefix` or a directory path.

    `options` go to the backend (`S3Store`: `cache_dir`, `client`, `max_attempts`).
    Opening creates nothing; reads of a location without a store raise `NotAStore`.
    """
    loc = str(location)
    if loc.startswith("s3://"):
        from model_store.store.s3 import S3Store, parse_s3_url  # boto3 loads only for S3 stores

        bucket, prefix = parse_s3_url(loc)
        return S3Store(bucket, prefix, public_key, **options)
    return FilesystemStore(Path(loc), public_key, **options)
