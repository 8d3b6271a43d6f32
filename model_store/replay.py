"""Replaying a receipt: the decision it states, reproduced bit for bit from the store.

Given a verified receipt (`model_store.receipts.verify`) and a photo, `Replayer.replay`:

1. checks that the photo is the one the receipt names (its sha256);
2. loads the version the receipt names from the store, verified with the bundle key, and
   checks it is the same bundle (manifest sha256; a version name could be re-used
   elsewhere, never in one store) and the same threshold;
3. runs the photo through the same `Predictor` the service's workers use, as the worker
   ran it: the same torch threads, in a batch of the receipt's size at the receipt's row
   (the other rows hold copies of the photo: a row's result depends on the batch size and
   its place in it, never on the other rows' contents);
4. compares the probability bit for bit, and the decision.

Each step that fails raises a `ReceiptError` saying exactly what differs. A revoked
version replays too: it is still in the store, and disputes outlive revocations.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.metadata import version as installed_version

from model_store import domain
from model_store.errors import VersionNotFound
from model_store.predictor import Predictor, torch_threads
from model_store.preprocessing import DecodeLimits
from model_store.receipts import Receipt, ReceiptError
from model_store.store.base import Store

# The service's own limits were checked when the photo was served; replay takes any photo
# the service could have been configured to accept.
_REPLAY_PIXELS = 1 << 31


@dataclass(frozen=True)
class Replayed:
    receipt: Receipt
    probability: float
    decision: str


class Replayer:
    """Replays receipts against one store, loading each bundle once."""

    def __init__(self, store: Store, device: str = "cpu") -> None:
        self.store = store
        self.device = device
        self._predictors: dict[str, Predictor] = {}

    def _predictor(self, receipt: Receipt) -> Predictor:
        m = receipt.model
        predictor = self._predictors.get(m.version)
        if predictor is None:
            try:
                bundle = self.store.load(m.version)
            except VersionNotFound:
                raise ReceiptError(
                    f"the receipt's version {m.version!r} is no longer in the store {self.store.location}"
                ) from None
            predictor = Predictor(bundle, device=self.device, limits=DecodeLimits(max_pixels=_REPLAY_PIXELS))
            self._predictors[m.version] = predictor
        bundle = predictor.bundle
        if bundle.manifest_sha256 != m.manifest_sha256 or bundle.manifest.name != m.name:
            raise ReceiptError(
                f"the store's {m.version} is another bundle ({bundle.manifest.name}, manifest sha256 "
                f"{bundle.manifest_sha256[:16]}...) than the one that decided ({m.name}, {m.manifest_sha256[:16]}...)"
            )
        if predictor.threshold != receipt.threshold:
            raise ReceiptError(
                f"the bundle's threshold is {predictor.threshold!r}; the receipt says {receipt.threshold!r}"
            )
        return predictor

    def replay(self, receipt: Receipt, image: bytes) -> Replayed:
        """The receipt's decision reproduced from `image`, or a `ReceiptError` saying what differs."""
        digest = hashlib.sha256(image).hexdigest()
        if digest != receipt.image_sha256:
            raise ReceiptError(
                f"the image is not the one the receipt is for: its sha256 is {digest}, "
                f"the receipt names {receipt.image_sha256}"
            )
        predictor = self._predictor(receipt)
        run = receipt.runtime
        if run.device != self.device:
            raise ReceiptError(f"the receipt was computed on {run.device}; replay runs on {self.device}")
        batch, row = run.batch or 1, run.row or 0
        if row >= batch:
            raise ReceiptError(f"the receipt's runtime is inconsistent: row {row} of a batch of {batch}")
        manifest = predictor.manifest
        monitoring = manifest.monitoring
        with torch_threads(run.threads):
            info = predictor.preprocessor.inspect(image)
            tensor, stats = predictor.preprocessor.prepare(image, monitoring.stats_stride if monitoring else 1)
            rows = tensor.unsqueeze(0).expand(batch, *tensor.shape).contiguous()
            probability = predictor.probabilities(rows)[row]
        # The service's verdict: the bundle's rule, or `retake` outside its validated ranges.
        bounds = monitoring.domain if monitoring is not None else None
        decision, _ = domain.verdict(manifest.decision, bounds, probability, stats, info.width, info.height)
        if probability.hex() != receipt.probability.hex():
            here = installed_version("torch")
            where = f"torch {run.torch} there, {here} here" if here != run.torch else f"torch {here} on both"
            unknown = "" if run.batch is not None else "; the receipt does not say which batch it was computed in"
            raise ReceiptError(
                f"replayed probability {probability!r} differs from the receipt's {receipt.probability!r} by "
                f"{abs(probability - receipt.probability):.3g}; the receipt, image and bundle all check out, so "
                f"this machine computes differently ({where}; batch {batch}, row {row}{unknown})"
            )
        if decision != receipt.decision:
            raise ReceiptError(
                f"the probability replays bit for bit, but the bundle decides {decision!r} where the receipt "
                f"says {receipt.decision!r}"
            )
        return Replayed(receipt, probability, decision)
