"""Images the model should not judge: the per-image check behind `decision: "retake"`.

A classifier answers every input with a probability, however far the input is from what
it was validated on: a black frame, a lens cap, a photo of the floor get a confident
"damaged" or "intact". Drift (`model_store.monitoring`) sees such frames only after a
window of them from one station; this check sees each one.

At export, the validation split gives each cheap image feature its validated range (the
features drift already computes, on the model's own crop: brightness, contrast,
sharpness; and from the header: elongation and the short side). A bound is the
validated 0.5 % or 99.5 % quantile widened by `MARGIN` times the middle 90 % of the
values (on the log scale for contrast and sharpness, the logit of its share of 255 for
brightness), so a photo like the validated ones is almost never sent back (measured in
docs/monitoring.md), while a frame outside it gets `decision: "retake"` with the reason.
The bounds are part of the signed manifest (`MonitoringSpec.domain`); a bundle without
them (exported before) never answers retake.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from model_store.manifest import DecisionSpec, DomainBounds, FeatureRange
from model_store.monitoring import ImageStats

RETAKE = "retake"  # the decision a station gets for an image outside the validated range
MARGIN = 0.5  # widening of the validated range, in units of its middle 90 % (see module doc)
SMALL_SHARE = 0.5  # a short side under half the smallest validated one is too small to judge

# Feature -> what a station operator reads when the value is below / above its range.
_WORDS = {
    "brightness": ("too dark", "too bright (overexposed)"),
    "contrast": ("blank or featureless (too little contrast)", "too much contrast"),
    "sharpness": ("blurred or out of focus", "too noisy or too sharp"),
    "elongation": ("", "too elongated (long side / short side)"),
    "short_side": ("too small", ""),
}
FEATURES = tuple(_WORDS)
_EDGE = "the edge of the validated range"
_FLOOR = 1e-3  # a scale feature's smallest value on the log scale (a black frame's contrast is 0)


def _log(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.log(np.maximum(v, _FLOOR))
    return out


def _logit255(v: np.ndarray) -> np.ndarray:
    x = np.clip(v / 255.0, _FLOOR, 1 - _FLOOR)
    out: np.ndarray = np.log(x / (1 - x))
    return out


_SCALES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[float], float]]] = {
    "brightness": (_logit255, lambda t: 255.0 / (1.0 + math.exp(-t))),
    "contrast": (_log, math.exp),
    "sharpness": (_log, math.exp),
}


def measures(stats: ImageStats, width: int, height: int) -> dict[str, float]:
    """The checked features of one image: its crop's statistics and its header's shape.
    Elongation and the short side do not change with EXIF rotation."""
    long, short = max(width, height), min(width, height)
    return {
        "brightness": stats.brightness,
        "contrast": stats.contrast,
        "sharpness": stats.sharpness,
        "elongation": long / short,
        "short_side": float(short),
    }


def fit(rows: Sequence[Mapping[str, float]], margin: float = MARGIN) -> DomainBounds:
    """Validated ranges of `rows` (feature -> value, as `measures` gives) for the manifest."""
    ranges: dict[str, FeatureRange] = {}
    for name in FEATURES:
        v = np.asarray([r[name] for r in rows], dtype=np.float64)
        if name == "short_side":  # resolution: only too little of it is a problem
            ranges[name] = FeatureRange(low=float(v.min()) * SMALL_SHARE, high=None)
            continue
        if name == "elongation":  # 1 (square) and up: only too elongated is a problem
            q_hi, q5, q95 = np.quantile(v, [0.995, 0.05, 0.95])
            ranges[name] = FeatureRange(low=None, high=float(q_hi) + margin * max(float(q95 - q5), 0.05))
            continue
        # Contrast and sharpness are scales (0: blank, no detail): their ranges are widened
        # by ratios. Brightness is bounded at both ends (0 black, 255 saturated): widened on
        # the logit of its share of 255, so losing half the light or half the headroom to
        # saturation counts alike.
        forward, back = _SCALES[name]
        t = forward(v)
        q_lo, q5, q95, q_hi = np.quantile(t, [0.005, 0.05, 0.95, 0.995])
        widen = margin * max(float(q95 - q5), 0.05)
        ranges[name] = FeatureRange(low=back(q_lo - widen), high=back(q_hi + widen))
    return DomainBounds(images=len(rows), margin=margin, ranges=ranges)


@dataclass(frozen=True)
class Retake:
    feature: str  # the first feature out of its range, in `FEATURES` order
    reason: str  # what a station operator reads


def reason(bounds: DomainBounds, values: Mapping[str, float]) -> Retake | None:
    """Why an image with these `measures` is outside the validated range; None when inside."""
    for name, r in bounds.ranges.items():
        v = values.get(name)
        if v is None:
            continue
        below, above = _WORDS.get(name, ("", ""))
        if r.low is not None and v < r.low:
            return Retake(name, f"{below or name + ' too low'}: {name} {_fmt(v)} is below {_fmt(r.low)} ({_EDGE})")
        if r.high is not None and v > r.high:
            return Retake(name, f"{above or name + ' too high'}: {name} {_fmt(v)} is above {_fmt(r.high)} ({_EDGE})")
    return None


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def verdict(
    decision: DecisionSpec,
    bounds: DomainBounds | None,
    probability: float,
    stats: ImageStats | None,
    width: int,
    height: int,
) -> tuple[str, Retake | None]:
    """The served decision for one image and, for a retake, why: the bundle's decision rule
    for an image inside the validated ranges, `RETAKE` outside them."""
    if bounds is not None and stats is not None:
        why = reason(bounds, measures(stats, width, height))
        if why is not None:
            return RETAKE, why
    return decision.decide(probability), None
