"""The serving path: a verified bundle → probabilities and decisions.

Export (the reference outputs), `evaluate`, the CLI's parity proof and every inference
worker of the service (`app.serving.worker`: its preprocessor and `probabilities`) go
through this class, so what was validated is what is served.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.fx.experimental import optimization as fx_optimization

from model_store import parity
from model_store.bundle import Bundle
from model_store.errors import WeightsInvalid
from model_store.manifest import DecisionSpec
from model_store.parity import ParityReport
from model_store.preprocessing import DecodeLimits, Preprocessor
from model_store.zoo import build_model

SERVING_THREADS = 1  # torch threads per inference worker; parity expectations are recorded this way


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` torch threads. CPU kernels split work by thread count, which changes the
    last bits of a result; the service's workers run single-threaded, so parity expectations
    are recorded single-threaded too and reproduce bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def served_probabilities(logits: torch.Tensor, decision: DecisionSpec) -> torch.Tensor:
    """The one map from logits to the probabilities a station reads (float32).

    sigmoid(slope * logit + offset): the bundle's calibration plus the prior shift to the
    deployment damage rate (`DecisionSpec.logit_map`). Training, export, `evaluate`, the
    service and parity all call this. With no calibration and no shift it is exactly
    sigmoid(logit) (x * 1.0 + 0.0 == x), as schema 1 bundles recorded it.
    """
    slope, offset = decision.logit_map()
    with torch.inference_mode():
        return torch.sigmoid(logits.float() * slope + offset)


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
        runtime = self.manifest.runtime
        self._memory_format = torch.channels_last if runtime.memory_format == "channels_last" else None
        if self._memory_format is not None:
            self.model = self.model.to(memory_format=self._memory_format)
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        if runtime.graph == "fused":
            # Conv + BN folded into one convolution: the eval-mode function, fewer passes.
            fused: torch.nn.Module = fx_optimization.fuse(self.model)
            self._forward = fused.to(self.device).eval()

    def layout(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch on the model's device, in the memory format its runtime records."""
        batch = batch.to(self.device, non_blocking=True)
        if self._memory_format is None:
            return batch
        return batch.contiguous(memory_format=self._memory_format)

    def decide(self, probability: float) -> str:
        return self.manifest.decision.decide(probability)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Model on a preprocessed batch [N, 3, H, W] → its raw logit per row (float32, CPU)."""
        with torch.inference_mode():
            out = self._forward(self.layout(batch))
            return out[:, 0].float().cpu()

    def probabilities(self, batch: torch.Tensor) -> list[float]:
        """Model on a preprocessed batch [N, 3, H, W] → calibrated P(positive) per row."""
        probs: list[float] = served_probabilities(self.logits(batch), self.manifest.decision).tolist()
        return probs

    def predict(self, images: Sequence[bytes]) -> list[Prediction]:
        """Image bytes → one Prediction each, in order. Raises ImageError on bad input."""
        if not images:
            return []
        batch = torch.stack([self.preprocessor(data) for data in images])
        return [Prediction(p, self.decide(p)) for p in self.probabilities(batch)]

    def predict_files(self, paths: Sequence[Path], batch_size: int) -> Iterator[Prediction]:
        """Predictions for image files, in order, `batch_size` at a time (the offline tools'
        loop: evaluate, compare, export's check against training, in the same batches)."""
        for start in range(0, len(paths), batch_size):
            yield from self.predict([p.read_bytes() for p in paths[start : start + batch_size]])

    def warm_up(self, max_batch: int = 1) -> None:
        """Forward passes at every batch size up to `max_batch`, so no station request pays
        for first-call allocation (oneDNN picks and caches kernels per shape)."""
        x = self.preprocessor(next(iter(self.bundle.references.values())))
        for size in range(1, max_batch + 1):
            self.probabilities(x.expand(size, *x.shape).contiguous())

    def check_parity(self) -> ParityReport:
        """Run the bundle's reference images through the serving path and compare.

        Single-threaded and as one batch, as the expectations were recorded (`write_bundle`)
        and as the service's workers run them, so a healthy bundle reproduces bit for bit.
        """
        refs = self.manifest.parity.references
        with torch_threads(SERVING_THREADS):
            batch = torch.stack([self.preprocessor(self.bundle.references[r.file]) for r in refs])
            return self.parity_report(self.probabilities(batch))

    def parity_report(self, probabilities: Sequence[float]) -> ParityReport:
        """Compare probabilities of the reference images (in manifest order) with the record."""
        return parity.report(self.manifest, self.bundle.manifest_sha256, probabilities)


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
