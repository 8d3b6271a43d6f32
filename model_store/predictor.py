"""The serving path: a verified bundle → probabilities and decisions.

Training export, the service and `/parity` all predict through this class, so what was
validated is what is served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model_store.bundle import Bundle
from model_store.errors import WeightsInvalid
from model_store.parity import ParityCheck, ParityReport, parity_ok
from model_store.preprocessing import DecodeLimits, Preprocessor
from model_store.zoo import build_model


@dataclass(frozen=True)
class Prediction:
    probability: float  # P(positive label)
    decision: str  # positive label when probability >= threshold


class Predictor:
    """A bundle's model in eval mode with its own preprocessing and threshold.

    Example:
        predictor = Predictor(load_bundle(path, public_key))
        [p] = predictor.predict([jpeg_bytes])
    """

    def __init__(self, bundle: Bundle, device: str = "cpu", limits: DecodeLimits | None = None) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.device = torch.device(device)
        self.preprocessor = Preprocessor(self.manifest.preprocessing, limits)
        model = build_model(self.manifest.model)
        _check_weights_fit(model, bundle)
        model.load_state_dict(bundle.state_dict, strict=True)
        if self.device.type == "cuda":
            # TF32 would trade parity with the CPU reference for speed; parity wins.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.model = model.to(self.device).eval()
        self.threshold = self.manifest.decision.threshold

    def decide(self, probability: float) -> str:
        d = self.manifest.decision
        return d.positive_label if probability >= d.threshold else d.negative_label

    def probabilities(self, batch: torch.Tensor) -> list[float]:
        """Model on a preprocessed batch [N, 3, H, W] → P(positive) per row."""
        with torch.inference_mode():
            logits = self.model(batch.to(self.device, non_blocking=True))
            return torch.sigmoid(logits[:, 0].float()).cpu().tolist()

    def predict(self, images: Sequence[bytes]) -> list[Prediction]:
        """Image bytes → one Prediction each, in order. Raises ImageError on bad input."""
        if not images:
            return []
        batch = torch.stack([self.preprocessor(data) for data in images])
        return [Prediction(p, self.decide(p)) for p in self.probabilities(batch)]

    def warm_up(self) -> None:
        """One forward pass so the first station request does not pay for allocation."""
        self.predict(list(self.bundle.references.values())[:1])

    def check_parity(self) -> ParityReport:
        """Run the bundle's reference images through the serving path and compare."""
        refs = self.manifest.parity.references
        batch = torch.stack([self.preprocessor(self.bundle.references[r.file]) for r in refs])
        return self.parity_report(self.probabilities(batch))

    def parity_report(self, probabilities: Sequence[float]) -> ParityReport:
        """Compare probabilities of the reference images (in manifest order) with the record."""
        spec = self.manifest.parity
        checks = [
            ParityCheck(
                r.file,
                r.expected_probability,
                p,
                r.expected_decision,
                self.decide(p),
                parity_ok(
                    r.expected_probability, p, tolerance=spec.tolerance, threshold=self.threshold, decide=self.decide
                ),
            )
            for r, p in zip(spec.references, probabilities, strict=True)
        ]
        return ParityReport(self.bundle.version, self.bundle.manifest_sha256, spec.tolerance, self.threshold, checks)


def _check_weights_fit(model: torch.nn.Module, bundle: Bundle) -> None:
    """Strict loading, with a message that names the tensors instead of a wall of text."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in bundle.state_dict.items()}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & given.keys() if expected[k] != given[k])
    problems = [
        f"{label} {len(keys)}: {', '.join(keys[:3])}" + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped))
        if keys
    ]
    if problems:
        raise WeightsInvalid(
            f"{bundle.version}: weights do not fit {bundle.manifest.model.architecture}: " + "; ".join(problems)
        )
