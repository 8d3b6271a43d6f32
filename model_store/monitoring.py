"""Drift measures shared by export (the reference) and the service (live traffic).

Each image yields a few cheap features that cameras change: brightness, contrast and
sharpness of the model's own input crop (before normalisation), the photo's size and
aspect, and the served score. A bundle carries their reference histograms from the
validation split (scores reweighted to the deployment damage rate, since production sees
far fewer damaged parcels than a balanced validation split); the service compares a
window of live values per station with them by the population stability index (PSI).

PSI < 0.1: no shift; 0.1 to 0.25: moderate (warn); > 0.25: the inputs changed (alarm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model_store.manifest import DecisionSpec, FeatureHistogram, MonitoringSpec

FEATURES = ("score", "brightness", "contrast", "sharpness", "width", "height", "aspect")
IMAGE_FEATURES = ("brightness", "contrast", "sharpness")  # computed by the worker from the crop
PSI_WARN = 0.1
PSI_ALARM = 0.25
MIN_IMAGES = 30  # no verdict on fewer live images: sampling noise alone would be PSI ~ bins / n
BINS = 10
_EPS = 1e-4  # empty bins: PSI is infinite without a floor
_GREY = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
# New references (and so the live features compared with them) use every 2nd pixel of every
# 2nd row of the crop: a quarter of the work, which on every image in the service cost ~7%
# of an inference process at full resolution. Brightness, contrast and focus drift show the
# same. A bundle records the stride its reference used (`MonitoringSpec.stats_stride`).
STATS_STRIDE = 2


@dataclass(frozen=True)
class ImageStats:
    brightness: float  # mean grey level, 0-255
    contrast: float  # standard deviation of the grey levels
    sharpness: float  # mean absolute Laplacian of the grey levels: blur and dirty lenses lower it

    def as_list(self) -> list[float]:
        return [self.brightness, self.contrast, self.sharpness]


def image_stats(crop: torch.Tensor, stride: int = 1) -> ImageStats:
    """Features of a uint8 [3, H, W] crop (the model's input before normalisation), on every
    `stride`-th pixel of every `stride`-th row."""
    grey = (crop[:, ::stride, ::stride].to(torch.float32) * _GREY).sum(0)
    lap = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    return ImageStats(float(grey.mean()), float(grey.std()), float(lap.abs().mean()))


def features(stats: ImageStats, width: int, height: int, score: float) -> dict[str, float]:
    return {
        "score": score,
        "brightness": stats.brightness,
        "contrast": stats.contrast,
        "sharpness": stats.sharpness,
        "width": float(width),
        "height": float(height),
        "aspect": width / height,
    }


def fit_histogram(
    values: Sequence[float], weights: Sequence[float] | np.ndarray | None = None, bins: int = BINS
) -> FeatureHistogram:
    """Quantile cuts (so each bin holds about as much reference), then the weighted fractions."""
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(v)
    cum = np.cumsum(w[order]) / w.sum()
    cuts = sorted({float(v[order][np.searchsorted(cum, q)]) for q in np.arange(1, bins) / bins})
    if cuts and cuts[0] <= float(v.min()):
        cuts = cuts[1:]  # a cut at the minimum would leave the first bin empty by construction
    if not cuts:
        # A constant reference (every validation photo 1280x720): one bin just for that value,
        # so any other value lands outside it and counts as drift.
        c = float(v[0])
        cuts = [c, float(np.nextafter(c, np.inf))]
    return FeatureHistogram(cuts=cuts, fractions=fractions(cuts, v, w))


def fractions(
    cuts: Sequence[float], values: Sequence[float] | np.ndarray, weights: np.ndarray | None = None
) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else weights
    which = np.searchsorted(np.asarray(cuts, dtype=np.float64), v, side="right")
    counts = np.bincount(which, weights=w, minlength=len(cuts) + 1)
    total = counts.sum()
    return [float(c / total) if total else 0.0 for c in counts]


def psi(reference: FeatureHistogram, live: Sequence[float]) -> float:
    """Population stability index of `live` values against the reference histogram."""
    actual = fractions(reference.cuts, live)
    return float(
        sum(
            (a - e) * math.log(a / e)
            for a, e in ((max(a, _EPS), max(e, _EPS)) for a, e in zip(actual, reference.fractions, strict=True))
        )
    )


def _prior_weights(labels: Sequence[int], decision: DecisionSpec) -> np.ndarray:
    """Per image weights giving the classes the deployment damage rate."""
    y = np.asarray(labels, dtype=np.float64)
    rate = float(y.mean())
    target = decision.deployment_prevalence or rate
    if not 0 < rate < 1:
        return np.ones_like(y)
    weights: np.ndarray = np.where(y == 1, target / rate, (1 - target) / (1 - rate))
    return weights


def score_reference(
    scores: Sequence[float], labels: Sequence[int], decision: DecisionSpec
) -> tuple[FeatureHistogram, float]:
    """The served scores' histogram and the positive-decision rate, at the deployment damage rate.

    Production sees far fewer damaged parcels than a balanced validation split, so the
    validation images are reweighted: what the service should see if only the rate changed.
    """
    w = _prior_weights(labels, decision)
    positive = np.asarray([decision.decide(s) == decision.positive_label for s in scores], dtype=np.float64)
    return fit_histogram(scores, w), float((positive * w).sum() / w.sum())


def reference(
    rows: Sequence[Mapping[str, float]], labels: Sequence[int], decision: DecisionSpec, stats_stride: int = STATS_STRIDE
) -> MonitoringSpec:
    """Reference histograms of validation `rows` (feature -> value) with 0/1 `labels`.

    Image features are what the camera delivers, whatever the parcel: unweighted. The score
    (and the decision rate) are reweighted to the deployment damage rate.
    """
    scores, rate = score_reference([r["score"] for r in rows], labels, decision)
    hists = {f: fit_histogram([r[f] for r in rows]) for f in FEATURES if f != "score"}
    return MonitoringSpec(
        images=len(rows), decision_rate=rate, features={"score": scores, **hists}, stats_stride=stats_stride
    )
