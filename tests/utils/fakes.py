"""An in-process stand-in for the inference workers, for route tests that need no processes.

Everything but the workers is real: header checks, admission, version pinning, the model
host, the store, signatures. Scores are a deterministic function of the image bytes, and
parity reproduces the bundle's record, so a route test runs in milliseconds.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Sequence
from typing import Any

from PIL import Image

from app.serving.pipeline import DeadlineExceeded, Explained, Pipeline, Scored, _Model
from model_store import parity
from model_store.bundle import Bundle
from model_store.explain import DEFAULT_METHOD, Method, forwards
from model_store.parity import ParityReport
from model_store.preprocessing import ImageInfo


def fake_probability(data: bytes) -> float:
    return int.from_bytes(hashlib.sha256(data).digest()[:2], "big") / 65535


class FakePipeline(Pipeline):
    def __init__(self, **options: Any) -> None:
        super().__init__(workers=1, **options)
        self.scored = 0  # images scored

    async def start(self) -> None:
        for w in self.pool.workers:
            w.alive = True  # nothing to start: "workers" answer in this process

    async def close(self) -> None:
        self._inspector.shutdown(wait=False)

    async def load(self, bundle: Bundle) -> None:
        model = self._models.get(bundle.version)
        if model is not None and model.manifest_sha256 == bundle.manifest_sha256:
            model.users += 1
            return
        self._models[bundle.version] = _Model(
            bundle.version, bundle.manifest, bundle.manifest_sha256, ({}, ()), users=1, ready={0}
        )

    def release(self, version: str) -> None:
        model = self._models.get(version)
        if model is not None:
            model.users -= 1
            if model.users <= 0:
                del self._models[version]

    async def parity(self, version: str) -> ParityReport:
        model = self._models[version]
        expected = [r.expected_probability for r in model.manifest.parity.references]
        return parity.report(model.manifest, model.manifest_sha256, expected)

    async def predict(
        self,
        version: str,
        images: Sequence[tuple[str, bytes, ImageInfo]],
        *,
        shadow: bool = False,
        deadline: float | None = None,
    ) -> list[Scored]:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("queue", "its budget ran out before it was queued")
        work = sum(info.decode_work for _, _, info in images)
        if not shadow:
            self.admission.admit(len(images), work)
        try:
            decide = self._models[version].manifest.decision.decide
            self.scored += len(images)
            return [Scored(p, decide(p)) for p in (fake_probability(data) for _, data, _ in images)]
        finally:
            if not shadow:
                for _, _, info in images:
                    self.admission.answered(info.decode_work)

    async def explain(
        self,
        version: str,
        image: tuple[str, bytes, ImageInfo],
        *,
        method: Method = DEFAULT_METHOD,
        deadline: float | None = None,
    ) -> Explained:
        """Predict's fake probability, a one-cell grid over the whole image, a 1x1 PNG."""
        _, data, info = image
        self.admission.admit_explain(forwards(method), 2 * info.decode_work)
        try:
            p = fake_probability(data)
            decision = self._models[version].manifest.decision.decide(p)
            seen = (0.0, 0.0, float(info.width), float(info.height))
            return Explained(p, decision, None, method, info.width, info.height, seen, [[1.0]], ONE_PIXEL_PNG)
        finally:
            self.admission.explained()


def _one_pixel_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    return buf.getvalue()


ONE_PIXEL_PNG = _one_pixel_png()
