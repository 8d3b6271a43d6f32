"""Helpers that copy, alter and re-sign bundles, and snapshot stores, for tests."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from model_store.activation import prove
from model_store.bundle import MANIFEST_FILE, load_bundle
from model_store.manifest import sha256_bytes
from model_store.parity import ParityProof
from model_store.signing import sign_directory


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (but the lock file) with its bytes: to assert nothing changed."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def failing_parity_copy(src: Path, dest: Path, private_key: Path, version: str | None = None) -> Path:
    """A copy of `src` whose recorded parity outputs are inverted, correctly re-signed.

    Signature and digests verify; only a parity check can refuse it.
    """
    shutil.copytree(src, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    if version is not None:
        manifest["version"] = version
    for ref in manifest["parity"]["references"]:
        ref["expected_probability"] = round(1 - ref["expected_probability"], 6)
        ref["expected_decision"] = "intact" if ref["expected_decision"] == "damaged" else "damaged"
    (dest / "manifest.json").write_text(json.dumps(manifest))
    sign_directory(dest, private_key)
    return dest


def proof_for(bundle_dir: Path, public_key: Path) -> ParityProof:
    """The parity proof of a bundle directory, as `model_store.activation` obtains it."""
    return prove(load_bundle(bundle_dir, public_key))


def proof_from_elsewhere(bundle_dir: Path) -> ParityProof:
    """The proof another machine would send after its own parity run passed on this bundle.

    Lets a test point a store at a bundle that fails parity *here*, as a replica with other
    kernels (or a hand-edited pointer) could; nothing in the product builds proofs this way.
    """
    manifest = (bundle_dir / MANIFEST_FILE).read_bytes()
    version = json.loads(manifest)["version"]
    return ParityProof(version, sha256_bytes(manifest), 0.0)


def resign_with_weights(path: Path, weights: bytes, private_key: Path) -> None:
    """Replace a bundle's weights (any bytes) and sign it again: correctly signed, so only
    the weights' own checks can refuse it."""
    (path / "model.safetensors").write_bytes(weights)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))
    sign_directory(path, private_key)
