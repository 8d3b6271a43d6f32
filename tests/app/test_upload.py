"""Bundle archive extraction, in process: what lands on disk, what is refused."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from app.ops.upload import MAX_MEMBERS, clean_stale, extract_bundle_tar, workspace
from model_store.bundle import load_bundle
from model_store.errors import UnsafeArchive
from tests.utils.archives import HOSTILE_KINDS, hostile_tar, tar_of


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("arcname", ["bundle", "."])
def test_a_bundle_extracts_whether_archived_in_a_folder_or_flat(tmp_path: Path, bundles, keys, arcname: str) -> None:
    dest = tmp_path / "x"
    dest.mkdir()
    root = extract_bundle_tar(tar_of(bundles["v1"], arcname), dest, max_bytes=50_000_000)
    assert _files(root) == _files(bundles["v1"])
    assert load_bundle(root, keys[1]).version == "v1"


def test_compressed_archives_are_read(tmp_path: Path, bundles) -> None:
    root = extract_bundle_tar(tar_of(bundles["v1"], mode="w:gz"), tmp_path, max_bytes=50_000_000)
    assert (root / "manifest.json").read_bytes() == (bundles["v1"] / "manifest.json").read_bytes()


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_hostile_members_are_refused_before_anything_is_written(tmp_path: Path, bundles, kind: str) -> None:
    dest = tmp_path / "x"
    dest.mkdir()
    with pytest.raises(UnsafeArchive):
        extract_bundle_tar(hostile_tar(kind, bundles["v1"]), dest, max_bytes=50_000_000)
    assert list(dest.iterdir()) == []  # checked first, extracted never
    assert not (tmp_path / "escaped.txt").exists()


def test_size_and_member_limits(tmp_path: Path, bundles) -> None:
    with pytest.raises(UnsafeArchive, match="expands beyond 1000 bytes"):
        extract_bundle_tar(tar_of(bundles["v1"]), tmp_path, max_bytes=1000)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(MAX_MEMBERS + 1):
            tar.addfile(tarfile.TarInfo(f"f{i}"), io.BytesIO(b""))
    with pytest.raises(UnsafeArchive, match=f"more than {MAX_MEMBERS} members"):
        extract_bundle_tar(buf.getvalue(), tmp_path, max_bytes=1000)


@pytest.mark.parametrize("data", [b"", b"not a tar at all", b"\x1f\x8b\x08\x00" + b"\xff" * 64])
def test_garbage_is_an_unsafe_archive(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(UnsafeArchive, match="tar archive"):
        extract_bundle_tar(data, tmp_path, max_bytes=1000)


def test_a_compression_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("bundle/model.safetensors")
        info.size = 200_000_000  # 200 MB of zeros: about 200 KB compressed
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    data = buf.getvalue()
    assert len(data) < 1_000_000
    dest = tmp_path / "x"
    dest.mkdir()
    with pytest.raises(UnsafeArchive, match="expands beyond 50000000 bytes"):
        extract_bundle_tar(data, dest, max_bytes=50_000_000)
    assert list(dest.rglob("*")) == []  # nothing written


def test_upload_folders_left_by_a_killed_process_are_removed(tmp_path: Path) -> None:
    dead, mine = tmp_path / "upload-999999999-abc", tmp_path / f"upload-{os.getpid()}-def"
    dead.mkdir()
    mine.mkdir()
    (dead / "half.tar").write_bytes(b"x" * 100)
    assert clean_stale(tmp_path) == 1
    assert not dead.exists() and mine.exists()
    with workspace(tmp_path) as ws:
        assert ws.parent == tmp_path and ws.name.startswith(f"upload-{os.getpid()}-")
    assert not ws.exists()


def test_an_archive_with_too_many_members_is_refused_before_it_is_indexed(tmp_path: Path, monkeypatch) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(MAX_MEMBERS + 1000):
            tar.addfile(tarfile.TarInfo(f"f{i}"), io.BytesIO(b""))
    # Indexing every member first costs time and memory in proportion to the archive (400,000
    # members: 10 s, +151 MiB) before the limit says no: count how many headers are read.
    read: list[int] = []
    real_next = tarfile.TarFile.next

    def counting_next(self: tarfile.TarFile) -> tarfile.TarInfo | None:
        read.append(1)
        return real_next(self)

    monkeypatch.setattr(tarfile.TarFile, "next", counting_next)
    dest = tmp_path / "x"
    dest.mkdir()
    with pytest.raises(UnsafeArchive, match=f"members; the limit is {MAX_MEMBERS}"):
        extract_bundle_tar(buf.getvalue(), dest, max_bytes=1_000_000)
    assert len(read) <= MAX_MEMBERS + 10, f"{len(read)} member headers read"  # open() reads a few
    assert list(dest.iterdir()) == []
