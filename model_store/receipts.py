"""Decision receipts: one signed statement per served decision, saying which model decided
what on exactly which photo, so that a disputed decision can be proved and reproduced.

A receipt is a JSON Web Signature (RFC 7515) in compact form, `header.payload.signature`,
made and checked with PyJWT: any JOSE library (or jwt.io) reads it. It is signed ES256
(ECDSA on P-256 with SHA-256) with the service's own key (`APP_RECEIPT_KEY`, made by
`python -m model_store keygen`; not the key that signs bundles). The header names the key
by its RFC 7638 thumbprint (`kid`), so receipts stay verifiable after the key is rotated,
given the old public key. The payload (`Receipt`):

    {"iat": 1764410000, "request_id": "3f9f...", "index": 0, "station": "dock-1",
     "image_sha256": "9c1e...", "probability": 0.9999998807907104, "decision": "damaged",
     "threshold": 0.07304916903376579,
     "model": {"name": "parcel-damage", "version": "demo-1", "manifest_sha256": "391a..."},
     "runtime": {"device": "cpu", "threads": 1, "batch": 16, "row": 3, "torch": "2.14.1"}}

`probability` is exactly the value the answer carries (a float32 written as the shortest
decimal that reads back as the same number, so `np.float32(p)` is the FP32 `/v2` sends).
`runtime` is what reproducing it bit for bit needs: a CPU kernel's last bits depend on the
batch size and the image's row in it, never on the other images (`model_store.replay`).

This module imports neither torch nor the store: the service signs with it, the settings
check the key with it, and `receipt verify` needs nothing more.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model_store.errors import ModelStoreError, describe_validation_errors

ALGORITHM = "ES256"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
_COMPACT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


class ReceiptError(ModelStoreError):
    """A receipt refused, or a replay that does not reproduce it; the message says which part."""

    code = "receipt_invalid"


class ReceiptKeyError(ReceiptError):
    """The key to sign or verify receipts with cannot be used."""

    code = "receipt_key_invalid"


# --- the statement -------------------------------------------------------------------


class ModelClaim(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    manifest_sha256: str = Field(pattern=SHA256_PATTERN)


class RuntimeClaim(BaseModel):
    """How the probability was computed, as far as its last bits depend on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str  # cpu or cuda
    threads: int = Field(ge=1)  # torch threads of the inference process
    batch: int | None = Field(None, ge=1)  # images in its forward pass (None: not known)
    row: int | None = Field(None, ge=0)  # its row in that batch
    torch: str  # the torch version that computed it


class Receipt(BaseModel):
    """A receipt's payload, validated. Unknown claims are kept (a newer service may add some)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    iat: int = Field(description="when it was signed, seconds since the epoch (JWT NumericDate)")
    request_id: str
    index: int = Field(ge=0, description="the image's place in its request")
    station: str
    image_sha256: str = Field(pattern=SHA256_PATTERN)
    probability: float
    decision: str
    reason: str | None = None  # why the decision is `retake` (the image is outside the validated ranges)
    threshold: float
    model: ModelClaim
    runtime: RuntimeClaim


def claims(
    *,
    iat: int,
    request_id: str,
    index: int,
    station: str,
    image_sha256: str,
    probability: float,
    decision: str,
    threshold: float,
    model: tuple[str, str, str],
    runtime: Mapping[str, Any],
    reason: str | None = None,
) -> dict[str, Any]:
    """A receipt's payload as the service signs it: `Receipt`'s fields, built directly (no
    validation pass per image; tests check that `Receipt` reads it back unchanged).
    `model` is (name, version, manifest sha256); `runtime` `RuntimeClaim`'s fields."""
    name, version, manifest_sha256 = model
    return {
        "iat": iat,
        "request_id": request_id,
        "index": index,
        "station": station,
        "image_sha256": image_sha256,
        "probability": probability,
        "decision": decision,
        "reason": reason,  # a retake says why, as the answer does; null for a verdict
        "threshold": threshold,
        "model": {"name": name, "version": version, "manifest_sha256": manifest_sha256},
        "runtime": dict(runtime),
    }


# --- keys ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public key as a JWK (RFC 7517), with its thumbprint as `kid`."""
    numbers = key.public_numbers()
    jwk = {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }
    # RFC 7638: the required members, in lexicographic order, no whitespace.
    thumbprint = _b64(hashlib.sha256(json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()).digest())
    return {**jwk, "kid": thumbprint, "alg": ALGORITHM, "use": "sig"}


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    return public_jwk(key)["kid"]


def _p256_public(key: object, where: str) -> ec.EllipticCurvePublicKey:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ReceiptKeyError(f"{where} is not an EC P-256 key (receipts are {ALGORITHM}; make one with keygen)")
    return key


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The service's receipt key: an EC P-256 private key PEM (`python -m model_store keygen`)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), None)
    except (OSError, ValueError, TypeError) as exc:
        raise ReceiptKeyError(f"cannot read the receipt key {path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ReceiptKeyError(f"the receipt key {path} is not an EC P-256 private key (make one with keygen)")
    return key


def _keys_in_json(data: bytes, where: str) -> list[ec.EllipticCurvePublicKey]:
    try:
        doc = json.loads(data)
        jwks = doc["keys"] if isinstance(doc, dict) and "keys" in doc else [doc]
        return [_p256_public(jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(k)), where) for k in jwks]
    except ReceiptKeyError:
        raise
    except (ValueError, TypeError, KeyError, jwt.exceptions.InvalidKeyError) as exc:
        raise ReceiptKeyError(f"{where} is not a JWK or JWK set of EC P-256 keys: {exc}") from None


def _keys_in_file(path: Path) -> list[ec.EllipticCurvePublicKey]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReceiptKeyError(f"cannot read the receipt key {path}: {exc.strerror or exc}") from None
    if data.lstrip().startswith(b"{"):
        return _keys_in_json(data, str(path))
    try:
        key: object = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, None)
        except (ValueError, TypeError):
            raise ReceiptKeyError(f"{path} is neither a PEM key nor a JWK set") from None
    return [_p256_public(key, str(path))]


@dataclass(frozen=True)
class ReceiptKeys:
    """The public keys receipts are checked against, by key id.

    From a PEM file (public, or the private key itself), a JWK or JWK set as
    `GET /v1/receipts/keys` serves it, or a directory of such files (`*.pem`, `*.json`):
    keep the old public key there when the service's key is rotated, and its receipts
    still verify."""

    location: str
    by_id: dict[str, ec.EllipticCurvePublicKey]

    @classmethod
    def load(cls, path: Path) -> ReceiptKeys:
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".pem", ".json") and p.is_file())
            if not files:
                raise ReceiptKeyError(f"receipt key directory {path} holds no *.pem or *.json file")
        elif path.is_file():
            files = [path]
        else:
            raise ReceiptKeyError(f"receipt key {path} does not exist")
        keys = [k for f in files for k in _keys_in_file(f)]
        return cls(str(path), {key_id(k): k for k in keys})


def jwks(key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """A JWK set holding `key`: what `GET /v1/receipts/keys` serves and `receipt key` prints."""
    return {"keys": [public_jwk(key)]}


def public_pem(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


# --- signing and verifying -----------------------------------------------------------


class ReceiptSigner:
    """Signs receipt payloads with the service's key (about 50 us each: docs/receipts.md)."""

    def __init__(self, private_key: Path) -> None:
        self._key = load_private_key(private_key)
        self.public_key = self._key.public_key()
        self.kid = key_id(self.public_key)
        self._jws = jwt.PyJWS()
        self._headers = {"kid": self.kid, "typ": "JWT"}

    def sign(self, payload: Mapping[str, Any]) -> str:
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        return self._jws.encode(body, self._key, algorithm=ALGORITHM, headers=self._headers)


def read_token(text: str) -> str:
    """A receipt as given: surrounding whitespace and quotes (copied from JSON) dropped."""
    token = text.strip().strip('"')
    if not _COMPACT.match(token):
        raise ReceiptError(
            "not a receipt: a receipt is three base64url parts joined by dots (header.payload.signature)"
        )
    return token


def verify(token: str, keys: ReceiptKeys) -> Receipt:
    """The receipt's payload, once its signature verifies with one of `keys`.

    Every refusal is a `ReceiptError` whose one line says what is wrong: not a receipt,
    an altered byte, a key that is not among `keys`, or a payload that is not a receipt.
    """
    token = read_token(token)
    try:
        header = jwt.get_unverified_header(token)
    except jwt.exceptions.DecodeError:
        raise ReceiptError("the receipt's header is not base64url JSON: the receipt was altered") from None
    alg, kid = header.get("alg"), header.get("kid")
    if alg != ALGORITHM:
        raise ReceiptError(f"the receipt says it is signed {str(alg)[:20]!r}; receipts are {ALGORITHM}")
    key = keys.by_id.get(kid) if isinstance(kid, str) else None
    if key is None:
        known = ", ".join(sorted(keys.by_id)) or "none"
        raise ReceiptError(
            f"the receipt is signed by key {str(kid)[:64]!r}, which is not among the receipt keys in "
            f"{keys.location} ({known}): another service's key, or an altered header"
        )
    try:
        payload = jwt.PyJWS().decode(token, key, algorithms=[ALGORITHM])
    except jwt.exceptions.InvalidSignatureError:
        raise ReceiptError(
            f"the receipt's signature does not verify with key {kid} from {keys.location}: "
            "it was altered after it was signed"
        ) from None
    except jwt.exceptions.DecodeError as exc:
        raise ReceiptError(f"the receipt is not well formed ({exc}): it was altered") from None
    # base64url can spell the same bytes several ways (a segment's last character carries
    # unused bits); only the one spelling the signer wrote is a receipt, so that no character
    # of one can be changed unnoticed.
    if any(_b64(_unb64(part)) != part for part in token.split(".")):
        raise ReceiptError("the receipt's base64url is not as it was signed: the receipt was altered")
    try:
        return Receipt.model_validate_json(payload)
    except ValidationError as exc:
        problem = describe_validation_errors(exc.errors(include_url=False))
        raise ReceiptError(f"the signature verifies, but the payload is not a receipt: {problem}") from None


def describe(receipt: Receipt) -> str:
    """One line for a person: what was decided, by which model, on which photo, when."""
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(receipt.iat, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    m = receipt.model
    return (
        f"{receipt.decision} (probability {receipt.probability!r}, threshold {receipt.threshold!r}) "
        f"by {m.name} {m.version} (manifest sha256 {m.manifest_sha256[:12]}) on image sha256 "
        f"{receipt.image_sha256}, station {receipt.station}, request {receipt.request_id} image "
        f"{receipt.index}, {when}"
    )
