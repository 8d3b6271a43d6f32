"""Receipts in process, with real keys and real bundles: what is signed reads back unchanged,
every changed character of a receipt is refused in one line, keys rotate, and a replay
either reproduces the probability bit for bit or says exactly what differs."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from model_store.bundle import load_bundle
from model_store.predictor import SERVING_THREADS, Predictor, torch_threads
from model_store.receipts import (
    Receipt,
    ReceiptError,
    ReceiptKeyError,
    ReceiptKeys,
    ReceiptSigner,
    claims,
    describe,
    jwks,
    verify,
)
from model_store.replay import Replayer
from model_store.signing import generate_keypair
from model_store.store import FilesystemStore
from tests.utils.factories import image_bytes, make_bundle

IMAGE = image_bytes(11, (120, 90))


@pytest.fixture(scope="module")
def signer_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("receipt-key"))


@pytest.fixture(scope="module")
def signer(signer_keys: tuple[Path, Path]) -> ReceiptSigner:
    return ReceiptSigner(signer_keys[0])


@pytest.fixture
def store(tmp_path: Path, keys, bundles) -> FilesystemStore:
    s = FilesystemStore(tmp_path / "store", keys[1])
    s.import_bundle(bundles["v1"], actor="test")
    return s


@pytest.fixture(scope="module")
def predictor(bundles, keys) -> Predictor:
    return Predictor(load_bundle(bundles["v1"], keys[1]))


def _claims(predictor: Predictor, image: bytes = IMAGE, batch: int = 1, row: int = 0, **changes: Any) -> dict[str, Any]:
    """A receipt's payload for `image` as a worker computes it: at `row` of a batch of `batch`."""
    import hashlib

    with torch_threads(SERVING_THREADS):
        x = predictor.preprocessor(image)
        others = [predictor.preprocessor(image_bytes(50 + i)) for i in range(batch)]
        others[row] = x  # among strangers: their contents do not change its bits
        p = predictor.probabilities(torch.stack(others))[row]
    payload = claims(
        iat=1_764_410_000,
        request_id="3f9fc0aa0a104f348f7ae91c7fe85424",
        index=0,
        station="dock-1",
        image_sha256=hashlib.sha256(image).hexdigest(),
        probability=p,
        decision=predictor.decide(p),
        threshold=predictor.threshold,
        model=("parcel-damage", "v1", predictor.bundle.manifest_sha256),
        runtime={"device": "cpu", "threads": 1, "batch": batch, "row": row, "torch": torch.__version__},
    )
    return {**payload, **changes}


def test_what_is_signed_reads_back_unchanged(signer: ReceiptSigner, signer_keys, predictor: Predictor) -> None:
    payload = _claims(predictor)
    receipt = verify(signer.sign(payload), ReceiptKeys.load(signer_keys[1]))
    assert receipt.model_dump() == payload  # `claims` builds exactly the fields `Receipt` reads
    assert receipt.probability.hex() == payload["probability"].hex()
    assert "\n" not in describe(receipt) and receipt.decision in describe(receipt)


def test_every_changed_character_of_a_receipt_is_refused_in_one_line(
    signer: ReceiptSigner, signer_keys, predictor: Predictor
) -> None:
    token = signer.sign(_claims(predictor))
    keys = ReceiptKeys.load(signer_keys[1])
    alphabet = string.ascii_letters + string.digits + "-_"
    for at, c in enumerate(token):
        if c == ".":
            continue
        other = alphabet[(alphabet.index(c) + 1) % len(alphabet)]
        with pytest.raises(ReceiptError) as refused:
            verify(token[:at] + other + token[at + 1 :], keys)
        assert "\n" not in str(refused.value), at
    for bad in ("", "a.b", token + ".x", token.replace(".", "", 1), token[:-1] + "!"):
        with pytest.raises(ReceiptError, match=r"not a receipt|altered"):
            verify(bad, keys)


def test_another_key_is_refused_and_rotated_keys_verify(
    signer: ReceiptSigner, signer_keys, predictor: Predictor, tmp_path: Path
) -> None:
    token = signer.sign(_claims(predictor))
    other_private, other_public = generate_keypair(tmp_path / "other")
    with pytest.raises(ReceiptError, match=f"signed by key '{signer.kid}', which is not among"):
        verify(token, ReceiptKeys.load(other_public))
    # The same key id on another key (a forged header) fails the signature itself.
    forged = ReceiptKeys("forged", {signer.kid: ReceiptSigner(other_private).public_key})
    with pytest.raises(ReceiptError, match="signature does not verify"):
        verify(token, forged)
    # Rotation: the old public key kept beside the new one, as PEM and as the served JWK set.
    rotated = tmp_path / "receipt-keys"
    rotated.mkdir()
    (rotated / "new.pem").write_bytes(other_public.read_bytes())
    (rotated / "old.json").write_text(json.dumps(jwks(signer.public_key)))
    keys = ReceiptKeys.load(rotated)
    assert set(keys.by_id) == {signer.kid, ReceiptSigner(other_private).kid}
    assert verify(token, keys).station == "dock-1"
    assert verify(ReceiptSigner(other_private).sign(_claims(predictor)), keys).station == "dock-1"
    # The private key file verifies too (its public half).
    assert verify(token, ReceiptKeys.load(signer_keys[0])).station == "dock-1"


def test_keys_that_cannot_sign_or_verify_receipts_are_refused(tmp_path: Path, keys) -> None:
    (tmp_path / "not-a-key.pem").write_text("hello\n")
    with pytest.raises(ReceiptKeyError, match="neither a PEM key nor a JWK set"):
        ReceiptKeys.load(tmp_path / "not-a-key.pem")
    with pytest.raises(ReceiptKeyError, match=r"cannot read the receipt key .*public\.pem"):
        ReceiptSigner(keys[1])  # a public key cannot sign
    ed25519 = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    (tmp_path / "ed25519.pem").write_bytes(ed25519)
    with pytest.raises(ReceiptKeyError, match="not an EC P-256 private key"):
        ReceiptSigner(tmp_path / "ed25519.pem")
    with pytest.raises(ReceiptKeyError, match="not an EC P-256 key"):
        ReceiptKeys.load(tmp_path / "ed25519.pem")
    with pytest.raises(ReceiptKeyError, match="does not exist"):
        ReceiptKeys.load(tmp_path / "missing.pem")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReceiptKeyError, match="holds no"):
        ReceiptKeys.load(tmp_path / "empty")


def test_a_signed_payload_that_is_not_a_receipt_is_refused(signer: ReceiptSigner, signer_keys) -> None:
    with pytest.raises(ReceiptError, match="the payload is not a receipt: request_id: Field required"):
        verify(signer.sign({"iat": 1, "image_sha256": "nope"}), ReceiptKeys.load(signer_keys[1]))


def test_replay_reproduces_a_row_of_a_batch_bit_for_bit(store: FilesystemStore, predictor: Predictor) -> None:
    replayer = Replayer(store)
    for batch, row in [(1, 0), (5, 3), (16, 15)]:
        receipt = Receipt.model_validate(_claims(predictor, batch=batch, row=row))
        assert replayer.replay(receipt, IMAGE).probability.hex() == receipt.probability.hex()


def test_replay_says_exactly_what_differs(store: FilesystemStore, predictor: Predictor, keys, tmp_path: Path) -> None:
    replayer = Replayer(store)
    receipt = Receipt.model_validate(_claims(predictor))
    changed = bytearray(IMAGE)
    changed[-10] ^= 1
    with pytest.raises(ReceiptError, match="the image is not the one the receipt is for: its sha256 is"):
        replayer.replay(receipt, bytes(changed))
    p = receipt.probability
    nudged = Receipt.model_validate(_claims(predictor, probability=float(torch.tensor(p).nextafter(torch.tensor(1.0)))))
    with pytest.raises(ReceiptError, match=r"differs from the receipt's .* all check out"):
        replayer.replay(nudged, IMAGE)
    other = "intact" if receipt.decision == "damaged" else "damaged"
    with pytest.raises(ReceiptError, match=f"the bundle decides '{receipt.decision}' where the receipt says '{other}'"):
        replayer.replay(Receipt.model_validate(_claims(predictor, decision=other)), IMAGE)
    with pytest.raises(ReceiptError, match="the bundle's threshold is"):
        replayer.replay(Receipt.model_validate(_claims(predictor, threshold=0.25)), IMAGE)
    gone = Receipt.model_validate(_claims(predictor, model={**_claims(predictor)["model"], "version": "v9"}))
    with pytest.raises(ReceiptError, match="the receipt's version 'v9' is no longer in the store"):
        replayer.replay(gone, IMAGE)
    # Another bundle under the same version name, in another store.
    elsewhere = FilesystemStore(tmp_path / "elsewhere", keys[1])
    elsewhere.import_bundle(make_bundle(tmp_path / "other-v1", keys[0], version="v1", seed=7).path, actor="test")
    with pytest.raises(ReceiptError, match="the store's v1 is another bundle"):
        Replayer(elsewhere).replay(receipt, IMAGE)
