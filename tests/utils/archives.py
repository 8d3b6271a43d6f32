"""Bundle archives for upload tests: good ones and hostile ones."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Literal

HOSTILE_KINDS = (
    "traversal",
    "absolute",
    "symlink",
    "hardlink",
    "device",
    "fifo",
    "file_then_directory",
    "dot_file",
    "long_name",
    "duplicate",
)


def tar_of(root: Path, arcname: str = "bundle", mode: Literal["w", "w:gz"] = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        tar.add(root, arcname=arcname)
    return buf.getvalue()


def hostile_tar(kind: str, good: Path) -> bytes:
    """A real bundle plus one member that must never be extracted."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(good, arcname="bundle")
        plain = {
            "file_then_directory": [("bundle/x", tarfile.REGTYPE), ("bundle/x/y", tarfile.REGTYPE)],
            "dot_file": [(".", tarfile.REGTYPE)],
            "long_name": [("bundle/" + "n" * 300, tarfile.REGTYPE)],
            "duplicate": [("bundle/manifest.json", tarfile.REGTYPE)],
        }.get(kind)
        if plain is not None:
            for name, kind_type in plain:
                extra = tarfile.TarInfo(name)
                extra.type, extra.size = kind_type, 4
                tar.addfile(extra, io.BytesIO(b"evil"))
            return buf.getvalue()
        info = tarfile.TarInfo(
            {"traversal": "../escaped.txt", "absolute": "/tmp/absolute-escape.txt"}.get(kind, "bundle/extra")
        )
        if kind in ("traversal", "absolute"):
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
            return buf.getvalue()
        info.type, info.linkname = {
            "symlink": (tarfile.SYMTYPE, "/etc/passwd"),
            "hardlink": (tarfile.LNKTYPE, "bundle/manifest.json"),
            "device": (tarfile.CHRTYPE, ""),
            "fifo": (tarfile.FIFOTYPE, ""),
        }[kind]
        tar.addfile(info)
    return buf.getvalue()
