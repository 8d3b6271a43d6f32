"""Calibration maps fitted on validation logits, and how calibrated probabilities are.

Both maps are monotone (the slope is positive), so they change what a score means, never
how images rank: ROC-AUC is the same before and after.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from model_store.manifest import CalibrationSpec

Method = Literal["none", "temperature", "platt"]
_SLOPE_BOUNDS = (1e-3, 1e3)  # keeps a separable validation set from pushing the slope to infinity
# A fitted slope outside this range is degenerate, not a calibration: a slope of 50 turns a
# logit of 0.1 into 5 (probability 0.007 -> 0.99), one of 0.02 flattens every score to ~0.5.
# The demo's Platt slope is 0.24, its temperature slope 0.06 (T = 17).
SANE_SLOPE = (0.02, 50.0)


def logistic(z: np.ndarray) -> np.ndarray:
    """The logistic function in float64, for fitting and shifting maps (overflow-free). Not
    what a station is served: that is `model_store.predictor.served_probabilities`, and
    `training.loops.uncalibrated_probabilities` mirrors it for an uncalibrated model."""
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


def fit(logits: object, labels: object, method: Method) -> CalibrationSpec:
    """The calibration map minimising log loss on (logits, 0/1 labels).

    - temperature: p = sigmoid(z / T), one parameter (slope = 1/T);
    - platt: p = sigmoid(a z + b), two parameters.

    Newton's method with a backtracking line search: a network's logits can be in the tens
    and shifted (the demo's intact parcels average +1.4, damaged +41), where plain Newton
    steps from (1, 0) overshoot and diverge. Each accepted step lowers the log loss.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if method == "none" or len(z) == 0 or y.min() == y.max():
        return CalibrationSpec()  # nothing to fit (or no way to fit it)

    def loss(a: float, b: float) -> float:
        s = a * z + b
        return float(np.sum(np.logaddexp(0.0, s) - y * s))  # -sum log-likelihood, overflow-free

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(200):
        p = logistic(a * z + b)
        w = np.maximum(p * (1 - p), 1e-12)
        ga, gb = float(np.sum((p - y) * z)), float(np.sum(p - y))
        haa, hab, hbb = float(np.sum(w * z * z)), float(np.sum(w * z)), float(np.sum(w))
        if method == "temperature":
            gb = 0.0
            step_a, step_b = ga / max(haa, 1e-12), 0.0
        else:
            det = haa * hbb - hab * hab
            if det > 1e-12 * max(haa * hbb, 1e-300):
                step_a, step_b = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
            else:  # flat curvature: fall back to a gradient step
                step_a, step_b = ga / max(haa, 1e-12), gb / max(hbb, 1e-12)
        decrease = ga * step_a + gb * step_b  # > 0 for a descent direction
        t = 1.0
        while t > 1e-12:
            new_a = float(np.clip(a - t * step_a, *_SLOPE_BOUNDS))
            new_b = b - t * step_b
            new = loss(new_a, new_b)
            if new <= current - 1e-4 * t * decrease:
                break
            t *= 0.5
        else:
            break  # no step lowers the loss: at the minimum, to numerical precision
        converged = abs(new_a - a) < 1e-10 and abs(new_b - b) < 1e-10
        a, b, current = new_a, new_b, new
        if converged:
            break
    return CalibrationSpec(method=method, slope=a, intercept=float(b))


def fit_checked(logits: object, labels: object, method: Method) -> CalibrationSpec:
    """`fit`, or the identity map with a one-line `note` saying why, when the fit is degenerate:
    one class only, a perfectly separated split (the log loss falls as the slope grows
    without bound, so the slope is an artefact of when the search stopped and every served
    probability is 0 or 1), or a slope above `SANE_SLOPE`. A slope below it is kept, with a
    note: the scores carry almost no information, and flat probabilities say so honestly."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if method == "none":
        return CalibrationSpec()
    prefix = f"calibration {method} not used, probabilities served uncalibrated"
    if len(z) == 0 or y.min() == y.max():
        return CalibrationSpec(note=f"{prefix}: validation holds {len(z)} images of one class only")
    neg_max, pos_min = float(z[y == 0].max()), float(z[y == 1].min())
    if neg_max < pos_min:
        return CalibrationSpec(
            note=f"{prefix}: the {len(z)} validation images are perfectly separated (every intact logit "
            f"{neg_max:.3g} or lower, every damaged {pos_min:.3g} or higher), so the fitted slope only grows"
        )
    spec = fit(z, y, method)
    lo, hi = SANE_SLOPE
    if spec.slope > hi:
        return CalibrationSpec(
            note=f"{prefix}: the fitted slope {spec.slope:.3g} is above {hi:g} ({len(z)} validation images)"
        )
    if spec.slope < lo:
        return spec.model_copy(
            update={
                "note": f"calibration {method} fitted slope {spec.slope:.3g}, below {lo:g}: on validation the "
                "model's scores carry almost no information, so every probability is near the damage rate"
            }
        )
    return spec


def log_loss(probs: object, labels: object) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def reliability(probs: object, labels: object, bins: int = 15) -> list[tuple[float, float, int]]:
    """Per equal-width bin with images in it: (mean predicted probability, observed rate, count)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append((float(p[mask].mean()), float(y[mask].mean()), int(mask.sum())))
    return out


def expected_calibration_error(probs: object, labels: object, bins: int = 15) -> float:
    """ECE: the count-weighted mean gap between predicted probability and observed rate."""
    rows = reliability(probs, labels, bins)
    n = sum(count for _, _, count in rows)
    return float(sum(count * abs(conf - rate) for conf, rate, count in rows) / max(n, 1))
