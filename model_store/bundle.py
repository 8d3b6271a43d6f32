"""Write and read signed model bundles (the layout in the README's "The bundle" and docs/design.md).

```
manifest.json       the contract (model_store.manifest.Manifest)
model.safetensors   weights only; never a pickle
reference/          parity images, as the bytes a station would send
model.sig           OpenSSF model signing signature over every file above
```

`load_bundle` is the only way in: it verifies the signature, the file set, the schema and
every digest before anything is used, and reads weights with safetensors only. Writing
lives in `model_store.writer`, above the `Predictor` it needs.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from model_store.errors import BundleError, BundleTampered, FileSetMismatch, WeightsInvalid
from model_store.manifest import Manifest, parse_manifest, sha256_bytes
from model_store.signing import SIGNATURE_FILE, verify_directory

if TYPE_CHECKING:
    import torch

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
REFERENCE_DIR = "reference"


@dataclass(frozen=True)
class Bundle:
    """A verified bundle, held in memory. Only `load_bundle` makes one (and a worker, from
    the bytes the front verified)."""

    path: Path
    manifest: Manifest
    manifest_sha256: str
    references: dict[str, bytes]
    manifest_bytes: bytes  # exactly what was verified, e.g. to hand to a worker process
    weights: bytes  # `model.safetensors` as verified (its safetensors header checked)

    @property
    def version(self) -> str:
        return self.manifest.version

    @cached_property
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors, parsed on first use: only where a model is built (an inference worker,
        the CLI, export), never in a front process that only verifies and hands bytes on."""
        return parse_weights(self.weights, self.path.name)


def expected_files(manifest: Manifest) -> set[str]:
    refs = {f"{REFERENCE_DIR}/{r.file}" for r in manifest.parity.references}
    return {MANIFEST_FILE, WEIGHTS_FILE, SIGNATURE_FILE} | refs


def _walk_files(root: Path) -> set[str]:
    """Relative paths of every file under root; links and special files are refused."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            full = Path(dirpath) / name
            mode = os.lstat(full).st_mode
            rel = full.relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                raise FileSetMismatch(f"{root.name}: {rel} is a symbolic link; bundles hold files only")
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise FileSetMismatch(f"{root.name}: {rel} is not a regular file")
            if stat.S_ISREG(mode):
                found.add(rel)
    return found


def load_bundle(path: Path, public_key: Path) -> Bundle:
    """Verify a bundle directory with the trusted public key and load it into memory.

    Raises a `BundleError` subclass naming the problem; nothing is unpickled, ever.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path} is not a bundle directory")
    present = _walk_files(path)
    verify_directory(path, public_key)

    manifest_bytes = (path / MANIFEST_FILE).read_bytes()
    manifest = parse_manifest(manifest_bytes)
    expected = expected_files(manifest)
    if present != expected:
        added, missing = sorted(present - expected), sorted(expected - present)
        raise FileSetMismatch(
            f"{path.name}: files do not match the manifest "
            f"(unexpected: {added or 'none'}; missing: {missing or 'none'})"
        )

    weights = (path / WEIGHTS_FILE).read_bytes()
    # Digests are re-checked on the bytes we actually use, not on what was on disk earlier.
    if sha256_bytes(weights) != manifest.weights_sha256:
        raise BundleTampered(f"{path.name}: {WEIGHTS_FILE} digest differs from the manifest")
    check_weights(weights, path.name)

    references: dict[str, bytes] = {}
    for ref in manifest.parity.references:
        data = (path / REFERENCE_DIR / ref.file).read_bytes()
        if sha256_bytes(data) != ref.sha256:
            raise BundleTampered(f"{path.name}: reference/{ref.file} digest differs from the manifest")
        references[ref.file] = data
    return Bundle(path, manifest, sha256_bytes(manifest_bytes), references, manifest_bytes, weights)


_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own bound on its JSON header


def check_weights(data: bytes, bundle_name: str) -> None:
    """Refuse anything that is not a safetensors file (a pickle, a `torch.save` zip) from
    its header alone: an 8-byte length, a JSON table of tensors whose byte ranges lie inside
    the file. No tensor is made; nothing is unpickled."""

    def invalid(why: str) -> WeightsInvalid:
        return WeightsInvalid(
            f"{bundle_name}: {WEIGHTS_FILE} is not a valid safetensors file ({why}); "
            "pickled checkpoints are never loaded"
        )

    if len(data) < 8:
        raise invalid("shorter than its header")
    n = int.from_bytes(data[:8], "little")
    if n > min(_MAX_HEADER, len(data) - 8):
        raise invalid("its header length points past the end of the file")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, ValueError):
        raise invalid("its header is not JSON") from None
    size = len(data) - 8 - n
    if not isinstance(header, dict):
        raise invalid("its header is not a table of tensors")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= size
        ):
            raise invalid(f"tensor {str(name)[:64]!r} has no valid byte range")


def parse_weights(data: bytes, bundle_name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as load_safetensors  # torch loads only when weights do

    try:
        return load_safetensors(data)
    except Exception as exc:  # safetensors raises its own error types and OSError variants
        raise WeightsInvalid(
            f"{bundle_name}: {WEIGHTS_FILE} is not a valid safetensors file ({exc}); "
            "pickled checkpoints are never loaded"
        ) from None
