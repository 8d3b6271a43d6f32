"""Safe extraction of an uploaded bundle `.tar` (optionally gzip/bz2/xz compressed).

Every member is checked before a single byte is written: only regular files and
directories; relative, plain names (no `..`, no absolute paths, no control characters, no
component longer than a bundle ever needs); no two members for one path and no file
where another member needs a directory; at most `MAX_MEMBERS` members and `max_bytes`
bytes once extracted (from the headers, so a compression bomb is refused before it
expands). Nothing is written outside the destination, and a refused archive leaves
nothing behind. Any other failure while extracting is an `UnsafeArchive` too, never a 500.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from model_store.errors import UnsafeArchive
from model_store.fsutil import private_temp_dir, remove_abandoned

MAX_MEMBERS = 1000
MAX_NAME = 128  # per path component: reference image names are at most 128 characters
MAX_PATH = 512
UPLOAD_PREFIX = "upload-"


def extract_bundle_tar(data: bytes, dest: Path, max_bytes: int) -> Path:
    """Extract into `dest`; returns the bundle directory (the archive root or its one folder)."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnsafeArchive(f"upload is not a readable tar archive: {exc}") from None
    with tar:
        members = _read_members(tar)
        _check_members(members, max_bytes)
        try:
            # Every member was checked above; the "data" filter re-checks as a second line.
            tar.extractall(dest, members=members, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise UnsafeArchive(f"upload could not be extracted safely: {type(exc).__name__}: {exc}") from None
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not (dest / "manifest.json").exists():
        return entries[0]
    return dest


def _path_of(m: tarfile.TarInfo) -> tuple[str, ...]:
    name = m.name
    if not name or any(ord(c) < 32 or c == "\x7f" for c in name):
        raise UnsafeArchive(f"archive member {name!r} has an empty name or control characters")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise UnsafeArchive(f"archive member {name!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchive(f"archive member {name!r} climbs out with '..'")
    if len(name) > MAX_PATH or any(len(part) > MAX_NAME for part in path.parts):
        raise UnsafeArchive(f"archive member {name[:60]!r}... has a name longer than a bundle ever needs")
    parts = tuple(p for p in path.parts if p != ".")
    if not parts and not m.isdir():
        raise UnsafeArchive(f"archive member {name!r} is a file where the archive root must be")
    return parts


def _read_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The member headers, one at a time, refused as soon as there are too many.

    Not `getmembers()`: it indexes the whole archive first, so 400,000 tiny members cost
    seconds and 150 MiB before the limit could say no.
    """
    members: list[tarfile.TarInfo] = []
    try:
        while (member := tar.next()) is not None:
            if len(members) == MAX_MEMBERS:
                raise UnsafeArchive(f"archive has more than {MAX_MEMBERS} members; the limit is {MAX_MEMBERS}")
            members.append(member)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnsafeArchive(f"upload is a corrupt tar archive: {exc}") from None
    return members


def _check_members(members: list[tarfile.TarInfo], max_bytes: int) -> None:
    total = 0
    files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    for m in members:
        parts = _path_of(m)
        if m.issym() or m.islnk():
            raise UnsafeArchive(f"archive member {m.name!r} is a link; bundles hold files only")
        if not (m.isfile() or m.isdir()):
            raise UnsafeArchive(f"archive member {m.name!r} is a device, FIFO or other special file")
        if m.isfile():
            if parts in files or parts in dirs:
                raise UnsafeArchive(f"archive member {m.name!r} appears twice, or as a file and a directory")
            files.add(parts)
        else:
            if parts in files:
                raise UnsafeArchive(f"archive member {m.name!r} is both a file and a directory")
            dirs.add(parts)
        total += m.size
        if total > max_bytes:
            raise UnsafeArchive(f"archive expands beyond {max_bytes} bytes")
    # A file may not stand where another member needs a parent directory.
    for parts in files | dirs:
        for i in range(1, len(parts)):
            if parts[:i] in files:
                raise UnsafeArchive(
                    f"archive member {'/'.join(parts)!r} needs {'/'.join(parts[:i])!r} to be a directory"
                )


def upload_root() -> Path:
    """Where uploads are unpacked: one folder per service process, cleaned when it is gone."""
    return Path(tempfile.gettempdir()) / "damage-detect-uploads"


@contextlib.contextmanager
def workspace(root: Path) -> Iterator[Path]:
    """A private directory for one upload, removed afterwards (and by `clean_stale` after a kill -9)."""
    root.mkdir(mode=0o700, exist_ok=True)
    path = private_temp_dir(root, UPLOAD_PREFIX)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def clean_stale(root: Path) -> int:
    """Remove upload folders whose process no longer runs; returns how many."""
    return remove_abandoned(root, UPLOAD_PREFIX)
