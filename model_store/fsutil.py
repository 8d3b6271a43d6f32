"""Crash-safe file writes: a reader sees the old file or the new one, never a torn one."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (the directory entry itself is data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], object], *, mode: int = 0o644) -> None:
    """Write `path` through `write(file)` into a temp file beside it, fsync, then rename over.

    A kill at any point leaves the previous file (or none) and at most a `.name.*.tmp`
    temp file (the filesystem store's next writer removes its own).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    atomic_write(path, lambda f: f.write(data), mode=mode)


def private_temp_dir(parent: Path, prefix: str) -> Path:
    """A new directory `parent/{prefix}{pid}-XXXXXXXX` for this process's work in progress.

    The pid in the name lets `remove_abandoned` tell work a killed process left behind from
    work still going on in another one (on this machine: pids are per host).
    """
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))


def remove_abandoned(parent: Path, prefix: str) -> int:
    """Remove `{prefix}{pid}-*` entries (directories or files) whose process is gone; how many."""
    removed = 0
    for entry in parent.glob(f"{glob.escape(prefix)}*-*") if parent.is_dir() else []:
        pid = entry.name[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            # Read-only files go too: unlinking needs write permission on the directory only.
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed
