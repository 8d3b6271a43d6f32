"""The tamper matrix: every way a bundle can be wrong is refused with its own error."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model_store.bundle import load_bundle
from model_store.errors import (
    BundleError,
    BundleTampered,
    FileSetMismatch,
    ManifestInvalid,
    SignatureInvalid,
    SignatureMissing,
    WeightsInvalid,
)
from model_store.predictor import Predictor
from model_store.signing import generate_keypair, sign_directory
from tests.utils.bundles import resign_with_weights
from tests.utils.factories import model_state, upstream_verify


def _flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_keygen_writes_private_key_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path)
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path)


def test_good_bundle_verifies(bundles: dict[str, Path], keys: tuple[Path, Path]) -> None:
    bundle = load_bundle(bundles["v1"], keys[1])
    assert bundle.version == "v1"
    assert set(bundle.references) == {r.file for r in bundle.manifest.parity.references}


def test_upstream_model_signing_command_accepts_our_bundle(bundles: dict[str, Path], keys: tuple[Path, Path]) -> None:
    result = upstream_verify(bundles["v1"], keys[1])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verification succeeded" in result.stdout


def test_upstream_model_signing_command_refuses_a_tampered_bundle(bundle_copy, keys: tuple[Path, Path]) -> None:
    path = bundle_copy()
    _flip_byte(path / "model.safetensors")
    assert upstream_verify(path, keys[1]).returncode != 0


def test_missing_signature_is_refused(bundle_copy, keys: tuple[Path, Path]) -> None:
    path = bundle_copy()
    (path / "model.sig").unlink()
    with pytest.raises(SignatureMissing, match=r"no model\.sig"):
        load_bundle(path, keys[1])


def test_bundle_signed_by_another_key_is_refused(bundle_copy, keys, other_keys) -> None:
    path = bundle_copy()
    sign_directory(path, other_keys[0])
    with pytest.raises(SignatureInvalid, match="different key"):
        load_bundle(path, keys[1])


def test_verifying_with_the_wrong_public_key_is_refused(bundles, other_keys) -> None:
    with pytest.raises(SignatureInvalid):
        load_bundle(bundles["v1"], other_keys[1])


def test_the_wrong_key_message_names_the_key_by_its_full_path(bundles, other_keys, monkeypatch) -> None:
    # Every deployment has a public.pem; given as a relative path, the message still says which one.
    monkeypatch.chdir(other_keys[1].parent.parent)
    relative = Path(other_keys[1].parent.name) / "public.pem"
    with pytest.raises(SignatureInvalid) as refused:
        load_bundle(bundles["v1"], relative)
    assert f"different key than {other_keys[1]}" in str(refused.value)


def test_altered_signature_is_refused(bundle_copy, keys) -> None:
    path = bundle_copy()
    sig = json.loads((path / "model.sig").read_text())
    envelope = sig["dsseEnvelope"]
    raw = bytearray(envelope["signatures"][0]["sig"].encode())
    raw[10] = ord("A") if raw[10] != ord("A") else ord("B")
    envelope["signatures"][0]["sig"] = raw.decode()
    (path / "model.sig").write_text(json.dumps(sig))
    with pytest.raises(SignatureInvalid):
        load_bundle(path, keys[1])


def test_garbage_signature_file_is_refused(bundle_copy, keys) -> None:
    path = bundle_copy()
    (path / "model.sig").write_bytes(b"not a sigstore bundle")
    with pytest.raises(SignatureInvalid, match="unreadable"):
        load_bundle(path, keys[1])


@pytest.mark.parametrize(
    ("file", "offset"),
    [
        ("manifest.json", 5),
        ("model.safetensors", -1),
        ("model.safetensors", 100),
        ("reference/ref-0.jpg", -3),
    ],
)
def test_any_changed_byte_in_any_file_is_refused(bundle_copy, keys, file: str, offset: int) -> None:
    path = bundle_copy()
    _flip_byte(path / file, offset)
    with pytest.raises(BundleTampered, match=file.split("/")[-1]):
        load_bundle(path, keys[1])


@pytest.mark.parametrize("added", ["reference/extra.jpg", "notes.txt", ".gitignore", ".git/config"])
def test_an_added_file_is_refused(bundle_copy, keys, added: str) -> None:
    path = bundle_copy()
    (path / added).parent.mkdir(exist_ok=True)
    (path / added).write_bytes(b"extra")
    with pytest.raises(FileSetMismatch):
        load_bundle(path, keys[1])


def test_a_removed_file_is_refused(bundle_copy, keys) -> None:
    path = bundle_copy()
    (path / "reference" / "ref-1.jpg").unlink()
    with pytest.raises(FileSetMismatch, match=r"ref-1\.jpg"):
        load_bundle(path, keys[1])


def test_a_file_added_and_signed_but_not_in_the_manifest_is_refused(bundle_copy, keys) -> None:
    path = bundle_copy()
    (path / "reference" / "extra.jpg").write_bytes(b"extra")
    sign_directory(path, keys[0])
    with pytest.raises(FileSetMismatch, match=r"extra\.jpg"):
        load_bundle(path, keys[1])


def test_a_symlink_is_refused(bundle_copy, keys, tmp_path: Path) -> None:
    path = bundle_copy()
    target = tmp_path / "outside.jpg"
    target.write_bytes((path / "reference" / "ref-0.jpg").read_bytes())
    (path / "reference" / "ref-0.jpg").unlink()
    (path / "reference" / "ref-0.jpg").symlink_to(target)
    with pytest.raises(FileSetMismatch, match="symbolic link"):
        load_bundle(path, keys[1])


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: m.update(schema_version=3), "schema_version"),
        (lambda m: m.update(surprise=True), "surprise"),
        (lambda m: m["decision"].update(threshold=1.5), "decision.threshold"),
        (lambda m: m["model"].update(architecture="alexnet"), "model.architecture"),
        (lambda m: m["preprocessing"].pop("mean"), "preprocessing.mean"),
    ],
)
def test_a_signed_manifest_that_fails_the_schema_is_refused(bundle_copy, keys, mutate, match) -> None:
    path = bundle_copy()
    manifest = json.loads((path / "manifest.json").read_text())
    mutate(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    sign_directory(path, keys[0])  # correctly signed: only the schema can refuse it
    with pytest.raises(ManifestInvalid, match=match):
        load_bundle(path, keys[1])


def test_signed_manifest_that_is_not_json_is_refused(bundle_copy, keys) -> None:
    path = bundle_copy()
    (path / "manifest.json").write_text("{not json")
    sign_directory(path, keys[0])
    with pytest.raises(ManifestInvalid, match="not valid JSON"):
        load_bundle(path, keys[1])


class _Detonator:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_weights_are_refused_and_never_unpickled(bundle_copy, keys, tmp_path: Path) -> None:
    path = bundle_copy()
    marker = tmp_path / "pickle-was-executed"
    resign_with_weights(path, pickle.dumps({"state": _Detonator(marker)}), keys[0])
    with pytest.raises(WeightsInvalid, match="not a valid safetensors"):
        load_bundle(path, keys[1])
    assert not marker.exists()


def test_torch_save_checkpoint_is_refused(bundle_copy, keys, tmp_path: Path) -> None:
    path = bundle_copy()
    torch.save(model_state(), tmp_path / "ckpt.pt")
    resign_with_weights(path, (tmp_path / "ckpt.pt").read_bytes(), keys[0])
    with pytest.raises(WeightsInvalid):
        load_bundle(path, keys[1])


def test_weights_of_another_architecture_are_refused_strictly(bundle_copy, keys, tmp_path: Path) -> None:
    path = bundle_copy()
    save_file(model_state("resnet18"), tmp_path / "w.safetensors")
    resign_with_weights(path, (tmp_path / "w.safetensors").read_bytes(), keys[0])
    bundle = load_bundle(path, keys[1])  # a valid safetensors file...
    with pytest.raises(WeightsInvalid, match="do not fit mobilenet_v3_small"):
        Predictor(bundle)  # ...that does not fit the manifest's architecture


def test_weights_missing_one_tensor_are_refused(bundle_copy, keys, tmp_path: Path) -> None:
    path = bundle_copy()
    state = model_state()
    state.pop(next(iter(state)))
    save_file(state, tmp_path / "w.safetensors")
    resign_with_weights(path, (tmp_path / "w.safetensors").read_bytes(), keys[0])
    with pytest.raises(WeightsInvalid, match="missing 1: features"):
        Predictor(load_bundle(path, keys[1]))


def _key_dir(path: Path, *public_keys: Path) -> Path:
    path.mkdir()
    for i, key in enumerate(public_keys):
        (path / f"key-{i}.pem").write_bytes(key.read_bytes())
    return path


def test_key_rotation_a_bundle_signed_by_any_trusted_key_verifies(bundle_copy, keys, other_keys, tmp_path) -> None:
    """`other_keys` is the new signer: trusted beside the old key, then alone."""
    new = bundle_copy("v1")
    sign_directory(new, other_keys[0])
    old = bundle_copy("v2")
    both = _key_dir(tmp_path / "both", keys[1], other_keys[1])
    assert load_bundle(new, both).version == "v1"  # the new key's bundles, during the rotation
    assert load_bundle(old, both).version == "v2"  # and the old key's, still
    only_old = _key_dir(tmp_path / "only-old", keys[1])
    with pytest.raises(SignatureInvalid, match="signed with a different key"):
        load_bundle(new, only_old)
    with pytest.raises(SignatureInvalid, match="signed with none of the 2 trusted keys"):
        load_bundle(new, _key_dir(tmp_path / "strangers", keys[1], generate_keypair(tmp_path / "third")[1]))
    _flip_byte(new / "model.safetensors")  # the key that signed it says: the files changed
    with pytest.raises(BundleTampered):
        load_bundle(new, both)
    with pytest.raises(BundleError, match=r"holds no \*.pem file"):
        load_bundle(old, _key_dir(tmp_path / "empty"))
