"""Safe extraction of an uploaded bundle `.tar`.

Refused: absolute paths, `..`, links, devices, FIFOs, anything but regular files and
directories, too many members, too many bytes once extracted. Nothing is written outside
the destination, and a refused archive leaves nothing behind.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

from model_store.errors import UnsafeArchive

MAX_MEMBERS = 1000


def extract_bundle_tar(data: bytes, dest: Path, max_bytes: int) -> Path:
    """Extract into `dest`; returns the bundle directory (the archive root or its one folder)."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnsafeArchive(f"upload is not a readable tar archive: {exc}") from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UnsafeArchive(f"upload is a corrupt tar archive: {exc}") from None
        _check_members(members, max_bytes)
        # Every member was checked above; the "data" filter re-checks as a second line.
        tar.extractall(dest, filter="data")
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not (dest / "manifest.json").exists():
        return entries[0]
    return dest


def _check_members(members: list[tarfile.TarInfo], max_bytes: int) -> None:
    if len(members) > MAX_MEMBERS:
        raise UnsafeArchive(f"archive has {len(members)} members; the limit is {MAX_MEMBERS}")
    total = 0
    for m in members:
        path = PurePosixPath(m.name)
        if path.is_absolute() or m.name.startswith("/"):
            raise UnsafeArchive(f"archive member {m.name!r} has an absolute path")
        if ".." in path.parts:
            raise UnsafeArchive(f"archive member {m.name!r} climbs out with '..'")
        if m.issym() or m.islnk():
            raise UnsafeArchive(f"archive member {m.name!r} is a link; bundles hold files only")
        if not (m.isfile() or m.isdir()):
            raise UnsafeArchive(f"archive member {m.name!r} is a device, FIFO or other special file")
        total += m.size
        if total > max_bytes:
            raise UnsafeArchive(f"archive expands beyond {max_bytes} bytes")
