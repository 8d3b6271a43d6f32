"""Write and read signed model bundles (the layout in DESIGN.md).

```
manifest.json       the contract (model_store.manifest.Manifest)
model.safetensors   weights only; never a pickle
reference/          parity images, as the bytes a station would send
model.sig           OpenSSF model signing signature over every file above
```

`load_bundle` is the only way in: it verifies the signature, the file set, the schema and
every digest before anything is used, and reads weights with safetensors only.
"""

from __future__ import annotations

import os
import platform
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import PIL

from model_store.errors import (
    BundleError,
    BundleTampered,
    FileSetMismatch,
    ParityFailed,
    WeightsInvalid,
)
from model_store.manifest import (
    Environment,
    Manifest,
    ParitySpec,
    ReferenceImage,
    parse_manifest,
    sha256_bytes,
)
from model_store.signing import SIGNATURE_FILE, sign_directory, verify_directory

if TYPE_CHECKING:
    import torch

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
REFERENCE_DIR = "reference"


@dataclass(frozen=True)
class Bundle:
    """A verified bundle, held in memory. Only `load_bundle` makes one."""

    path: Path
    manifest: Manifest
    manifest_sha256: str
    state_dict: dict[str, torch.Tensor]
    references: dict[str, bytes]

    @property
    def version(self) -> str:
        return self.manifest.version


@dataclass(frozen=True)
class ReferenceInput:
    """An image to store in `reference/` for parity; outputs are computed at write time."""

    file: str
    data: bytes
    label: str | None = None


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
    state_dict = _parse_weights(weights, path.name)

    references: dict[str, bytes] = {}
    for ref in manifest.parity.references:
        data = (path / REFERENCE_DIR / ref.file).read_bytes()
        if sha256_bytes(data) != ref.sha256:
            raise BundleTampered(f"{path.name}: reference/{ref.file} digest differs from the manifest")
        references[ref.file] = data
    return Bundle(path, manifest, sha256_bytes(manifest_bytes), state_dict, references)


def _parse_weights(data: bytes, bundle_name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as load_safetensors  # torch loads only when weights do

    try:
        return load_safetensors(data)
    except Exception as exc:  # safetensors raises its own error types and OSError variants
        raise WeightsInvalid(
            f"{bundle_name}: {WEIGHTS_FILE} is not a valid safetensors file ({exc}); "
            "pickled checkpoints are never loaded"
        ) from None


def current_environment(device: str) -> Environment:
    import torch
    import torchvision  # heavy; only writers need its version

    return Environment(
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        pillow=PIL.__version__,
        device=device,
    )


def write_bundle(
    out_dir: Path,
    manifest: Manifest,
    state_dict: Mapping[str, torch.Tensor],
    references: Sequence[ReferenceInput],
    private_key: Path,
) -> Bundle:
    """Write, sign and verify a bundle; return it as `load_bundle` reads it back.

    `manifest.parity.references` and `weights_sha256` are filled in here: the expected
    outputs are computed by reloading the signed draft through the serving `Predictor`,
    then the final manifest is signed and parity re-checked on the final bundle.

    The bundle appears at `out_dir` only once complete; `out_dir` must not exist.
    """
    from safetensors.torch import save as save_safetensors

    from model_store.predictor import Predictor  # the serving path; imports torch models

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise BundleError(f"{out_dir} already exists; refusing to overwrite a bundle")
    if not references:
        raise BundleError("a bundle needs at least one reference image for parity")
    public_key = _public_key_file(private_key)
    weights = save_safetensors({k: v.detach().cpu().contiguous() for k, v in state_dict.items()})

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes 0700; a bundle is meant to be shared
    try:
        (staging / WEIGHTS_FILE).write_bytes(weights)
        (staging / REFERENCE_DIR).mkdir()
        draft_refs = []
        for ref in references:
            (staging / REFERENCE_DIR / ref.file).write_bytes(ref.data)
            draft_refs.append(
                ReferenceImage(
                    file=ref.file,
                    sha256=sha256_bytes(ref.data),
                    label=ref.label,
                    expected_probability=0.0,
                    expected_decision="",
                )
            )
        draft = manifest.model_copy(
            update={
                "weights_sha256": sha256_bytes(weights),
                "parity": ParitySpec(tolerance=manifest.parity.tolerance, references=draft_refs),
            }
        )
        draft = parse_manifest(draft.to_json_bytes())  # re-validate what we are about to sign
        _write_and_sign(staging, draft, private_key)

        predictor = Predictor(load_bundle(staging, public_key), device="cpu")
        outputs = predictor.predict([ref.data for ref in references])
        final_refs = [
            r.model_copy(update={"expected_probability": o.probability, "expected_decision": o.decision})
            for r, o in zip(draft_refs, outputs, strict=True)
        ]
        final = parse_manifest(
            draft.model_copy(
                update={"parity": ParitySpec(tolerance=draft.parity.tolerance, references=final_refs)}
            ).to_json_bytes()
        )
        _write_and_sign(staging, final, private_key)

        bundle = load_bundle(staging, public_key)
        report = Predictor(bundle, device="cpu").check_parity()
        if not report.passed:
            raise ParityFailed(f"freshly written bundle fails parity: {report.summary()}")
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        public_key.unlink(missing_ok=True)
    return replace(bundle, path=out_dir)


def _write_and_sign(staging: Path, manifest: Manifest, private_key: Path) -> None:
    (staging / MANIFEST_FILE).write_bytes(manifest.to_json_bytes())
    sign_directory(staging, private_key)


def _public_key_file(private_key: Path) -> Path:
    """The public half of `private_key`, in a temp file, to verify what we just signed."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(Path(private_key).read_bytes(), None)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"cannot read private key {private_key}: {exc}") from None
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fd, name = tempfile.mkstemp(suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return Path(name)
