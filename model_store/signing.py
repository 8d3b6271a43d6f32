"""Keys, signing and signature verification, on top of OpenSSF `model_signing`.

Signatures are Sigstore bundles made with an EC P-256 key, so a bundle also verifies
offline with the upstream command:

    model_signing verify key BUNDLE --signature BUNDLE/model.sig --public_key public.pem
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from model_signing import hashing
from model_signing import signing as ms_signing
from model_signing import verifying as ms_verifying

from model_store.errors import (
    BundleError,
    BundleTampered,
    FileSetMismatch,
    SignatureInvalid,
    SignatureMissing,
)

SIGNATURE_FILE = "model.sig"


def generate_keypair(out_dir: Path) -> tuple[Path, Path]:
    """Write `private.pem` (mode 0600) and `public.pem`, EC P-256, into `out_dir`.

    Refuses to overwrite an existing key: losing a signing key is not undoable.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out_dir / "private.pem", out_dir / "public.pem"
    for p in (private_path, public_path):
        if p.exists():
            raise FileExistsError(f"{p} already exists; refusing to overwrite a key")
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600 from the start, so the key is never readable by others, even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path


def public_key_pem(private_key: Path) -> bytes:
    """The PEM public half of a private key file; `BundleError` when it cannot be read."""
    try:
        key = serialization.load_pem_private_key(Path(private_key).read_bytes(), None)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"cannot read private key {private_key}: {exc}") from None
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_file(private_key: Path, out: Path) -> Path:
    """Write the public half of `private_key` to `out` (to verify what was just signed)."""
    out.write_bytes(public_key_pem(private_key))
    return out


def _hashing_config() -> hashing.Config:
    # Git paths are signed like any file: a bundle holds nothing unsigned.
    return hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)


def sign_directory(bundle_dir: Path, private_key: Path) -> Path:
    """Sign every file in `bundle_dir` into `bundle_dir/model.sig`."""
    if not private_key.is_file():
        raise BundleError(f"private key {private_key} does not exist")
    sig = bundle_dir / SIGNATURE_FILE
    sig.unlink(missing_ok=True)
    try:
        (
            ms_signing.Config()
            .use_elliptic_key_signer(private_key=private_key)
            .set_hashing_config(_hashing_config())
            .sign(bundle_dir, sig)
        )
    except ValueError as exc:
        raise BundleError(f"cannot sign with {private_key}: {exc}") from None
    return sig


def trusted_keys(public_key: Path) -> list[Path]:
    """The public key files `public_key` names: itself, or every `*.pem` in it if it is a directory.

    A directory is how keys rotate: put the new public key beside the old one, sign new
    bundles with the new private key, and remove the old public key once no bundle that
    replicas may load was signed with it. A bundle verifies if any trusted key signed it.
    """
    public_key = Path(public_key)
    if public_key.is_dir():
        keys = sorted(p for p in public_key.glob("*.pem") if p.is_file())
        if not keys:
            raise BundleError(f"public key directory {public_key.absolute()} holds no *.pem file")
        return keys
    if not public_key.is_file():
        raise BundleError(f"public key {public_key} does not exist")
    return [public_key]


def verify_directory(bundle_dir: Path, public_key: Path) -> None:
    """Check `model.sig` against every file in `bundle_dir` with the trusted public key(s).

    `public_key` is one PEM file or a directory of them (`trusted_keys`).

    Raises:
        SignatureMissing: no `model.sig`.
        SignatureInvalid: signed with no trusted key, or the signature itself was altered.
        BundleTampered: a file's bytes differ from what was signed.
        FileSetMismatch: a file was added or removed after signing.
    """
    sig = bundle_dir / SIGNATURE_FILE
    if not sig.is_file():
        raise SignatureMissing(f"{bundle_dir} has no {SIGNATURE_FILE}; unsigned bundles are refused")
    keys = trusted_keys(public_key)
    refusals: list[SignatureInvalid] = []
    for key in keys:
        try:
            _verify_with(bundle_dir, sig, key)
            return
        except SignatureInvalid as exc:  # not this key's signature: try the next one
            refusals.append(exc)
        # BundleTampered and FileSetMismatch propagate: this key's signature verified, the files changed.
    if len(keys) == 1:
        raise refusals[0]
    raise SignatureInvalid(
        f"{bundle_dir.name} was signed with none of the {len(keys)} trusted keys in {Path(public_key).absolute()}"
    )


def _verify_with(bundle_dir: Path, sig: Path, public_key: Path) -> None:
    try:
        config = ms_verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    except ValueError as exc:
        raise BundleError(f"public key {public_key} is not a supported EC key: {exc}") from None
    try:
        config.verify(bundle_dir, sig)
    except json.JSONDecodeError as exc:
        raise SignatureInvalid(f"{SIGNATURE_FILE} of {bundle_dir.name} is unreadable: {exc}") from None
    except InvalidSignature:
        raise SignatureInvalid(
            f"signature of {bundle_dir.name} does not verify with {public_key.absolute()}: the signature was altered"
        ) from None
    except ValueError as exc:
        raise _classify(bundle_dir, public_key, str(exc)) from None
    except Exception as exc:  # a corrupt model.sig surfaces as protobuf/JSON parse errors
        raise SignatureInvalid(f"{SIGNATURE_FILE} of {bundle_dir.name} is unreadable: {exc}") from None


def _classify(bundle_dir: Path, public_key: Path, message: str) -> BundleError:
    if message.startswith("Signature mismatch"):
        if "Extra files" in message or "Missing files" in message:
            return FileSetMismatch(f"{bundle_dir.name}: files added or removed after signing: {message}")
        return BundleTampered(f"{bundle_dir.name}: file contents changed after signing: {message}")
    if "Key mismatch" in message:
        # The full path: every deployment has a public.pem, the operator needs to know which one.
        return SignatureInvalid(f"{bundle_dir.name} was signed with a different key than {public_key.absolute()}")
    return SignatureInvalid(f"signature of {bundle_dir.name} does not verify: {message}")
