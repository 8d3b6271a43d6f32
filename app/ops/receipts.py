"""Decision receipts in the service: one signed statement per image of a predict answer.

Off unless `APP_RECEIPT_KEY` names the service's own key: a receipt is worth something only
if it still verifies after a restart and on every replica, so the key is the operator's
to keep, never one the service would invent at startup (docs/receipts.md, which also has
what they cost). The format and the checks are `model_store.receipts`'s; this module only
fills in what the service knows: the request, the station, the served version and how the
workers computed each probability (`Scored.batch`, and the workers' device and threads).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from app.ops.model_host import Loaded
from app.serving.pipeline import Scored
from app.settings import Settings
from model_store.receipts import ReceiptSigner, claims, jwks


@dataclass(frozen=True)
class Receipts:
    signer: ReceiptSigner
    device: str
    threads: int
    torch: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Receipts | None:
        if settings.receipt_key is None:
            return None
        return cls(ReceiptSigner(settings.receipt_key), settings.device, settings.worker_threads, version("torch"))

    @property
    def kid(self) -> str:
        return self.signer.kid

    def keys(self) -> dict[str, Any]:
        """The public key as a JWK set (`GET /v1/receipts/keys`)."""
        return jwks(self.signer.public_key)

    def sign(
        self,
        request_id: str,
        station: str,
        loaded: Loaded,
        images: Sequence[tuple[str, bytes, Any]],
        scores: Sequence[Scored],
    ) -> list[str]:
        """One receipt per image of an answer, stating exactly the values the answer carries."""
        iat = int(time.time())
        model = (loaded.name, loaded.version, loaded.manifest_sha256)
        receipts = []
        for i, ((_, data, _), s) in enumerate(zip(images, scores, strict=True)):
            batch, row = s.batch if s.batch is not None else (None, None)
            runtime = {"device": self.device, "threads": self.threads, "batch": batch, "row": row, "torch": self.torch}
            payload = claims(
                iat=iat,
                request_id=request_id,
                index=i,
                station=station,
                # The worker hashed it; a pipeline that did not (a test's stand-in) is hashed here.
                image_sha256=s.image_sha256 or hashlib.sha256(data).hexdigest(),
                probability=s.probability,
                decision=s.decision,
                threshold=loaded.threshold,
                model=model,
                runtime=runtime,
                reason=s.reason,
            )
            receipts.append(self.signer.sign(payload))
        return receipts
