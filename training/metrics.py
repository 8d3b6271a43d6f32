"""Ranking metrics and the operating point, on plain arrays of probabilities and 0/1 targets."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


def _arrays(probs: object, targets: object) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.int64)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError("probs and targets must be 1-D and the same length")
    return p, y


def roc_auc(probs: object, targets: object) -> float:
    """Area under the ROC curve (ties count one half); NaN when a class is missing."""
    p, y = _arrays(probs, targets)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Average ranks over ties, vectorised: the bootstrap calls this a thousand times per split.
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ranking_metrics(prefix: str, probs: np.ndarray, targets: np.ndarray, loss: float) -> dict[str, float]:
    """Loss, accuracy at 0.5, ROC-AUC and PR-AUC, keyed `{prefix}_...` as runs report them."""
    return {
        f"{prefix}_loss": loss,
        f"{prefix}_accuracy": float(((probs >= 0.5) == targets).mean()),
        f"{prefix}_roc_auc": roc_auc(probs, targets),
        f"{prefix}_pr_auc": average_precision(probs, targets),
    }


def roc_curve(probs: object, targets: object) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) as the threshold sweeps from high to low."""
    p, y = _arrays(probs, targets)
    thresholds = np.r_[np.inf, np.unique(p)[::-1]]
    tpr = np.array([(p[y == 1] >= t).mean() if y.sum() else 0.0 for t in thresholds])
    fpr = np.array([(p[y == 0] >= t).mean() if (1 - y).sum() else 0.0 for t in thresholds])
    return fpr, tpr


def pr_curve(probs: object, targets: object) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) as the threshold sweeps from high to low."""
    p, y = _arrays(probs, targets)
    thresholds = np.unique(p)[::-1]
    recall, precision = [], []
    for t in thresholds:
        pred = p >= t
        tp = int((pred & (y == 1)).sum())
        recall.append(tp / max(1, int(y.sum())))
        precision.append(tp / max(1, int(pred.sum())))
    return np.array(recall), np.array(precision)


def average_precision(probs: object, targets: object) -> float:
    """PR-AUC as average precision: sum over thresholds of (ΔRecall × Precision)."""
    p, y = _arrays(probs, targets)
    if y.sum() == 0:
        return float("nan")
    recall, precision = pr_curve(p, y)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    precision: float
    recall: float
    false_positive_rate: float
    accuracy: float
    expected_cost: float  # per parcel, in the units of the configured costs
    damage_rate: float  # the share of damaged parcels `expected_cost` is for
    n: int
    tp: int
    fp: int
    tn: int
    fn: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def expected_cost(
    false_positive_rate: float, miss_rate: float, prevalence: float, cost_false_alarm: float, cost_miss: float
) -> float:
    """Cost per parcel where a share `prevalence` of parcels is damaged.

    The rates are per class, so they carry over from the validation split to any damage
    rate (prior shift): (1 - prevalence) * FPR * cost_false_alarm + prevalence * FNR * cost_miss.
    """
    return (1 - prevalence) * false_positive_rate * cost_false_alarm + prevalence * miss_rate * cost_miss


def at_threshold(
    probs: object,
    targets: object,
    threshold: float,
    cost_false_alarm: float,
    cost_miss: float,
    prevalence: float | None = None,
) -> OperatingPoint:
    """Metrics when `probability >= threshold` means positive (the service's rule).

    `expected_cost` is per parcel at `prevalence` (default: this data set's own damage rate).
    """
    p, y = _arrays(probs, targets)
    pred = p >= threshold
    tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
    fn, tn = int((~pred & (y == 1)).sum()), int((~pred & (y == 0)).sum())
    n = len(p)
    fpr = fp / (fp + tn) if fp + tn else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    rate = (tp + fn) / n if prevalence is None and n else (prevalence or 0.0)
    return OperatingPoint(
        threshold=float(threshold),
        precision=tp / (tp + fp) if tp + fp else 0.0,
        recall=recall,
        false_positive_rate=fpr,
        accuracy=(tp + tn) / n if n else 0.0,
        expected_cost=expected_cost(fpr, 1 - recall, rate, cost_false_alarm, cost_miss) if n else 0.0,
        damage_rate=float(rate),
        n=n,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )


def candidate_thresholds(probs: object) -> np.ndarray:
    """Midpoints between distinct probabilities, plus 0 and 1.

    A threshold exactly on a validation probability would let a rounding difference flip
    that case; midpoints keep every validation decision the same with the widest margin.
    """
    u = np.unique(np.asarray(probs, dtype=np.float64))
    candidates: np.ndarray = np.r_[0.0, (u[:-1] + u[1:]) / 2, 1.0]
    return candidates


def cost_curve(
    probs: object, targets: object, cost_false_alarm: float, cost_miss: float, prevalence: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(threshold, expected cost per parcel at `prevalence`) over all candidate thresholds."""
    p, y = _arrays(probs, targets)
    ts = candidate_thresholds(p)
    costs = np.array([at_threshold(p, y, t, cost_false_alarm, cost_miss, prevalence).expected_cost for t in ts])
    return ts, costs


def choose_threshold(
    probs: object,
    targets: object,
    *,
    method: str,
    cost_false_alarm: float,
    cost_miss: float,
    target_recall: float = 0.95,
    prevalence: float | None = None,
) -> OperatingPoint:
    """The operating point on validation data.

    - `min_expected_cost`: lowest expected cost per parcel at `prevalence` (default: the
      validation split's own damage rate); among equally cheap thresholds, the middle one.
    - `target_recall`: the highest threshold whose recall reaches the target, i.e. the
      fewest false alarms that still catch that share of damaged parcels.
    """
    p, y = _arrays(probs, targets)
    if method == "min_expected_cost":
        ts, costs = cost_curve(p, y, cost_false_alarm, cost_miss, prevalence)
        best = np.flatnonzero(np.isclose(costs, costs.min(), rtol=0, atol=1e-12))
        t = float(ts[best[len(best) // 2]])
    elif method == "target_recall":
        ts = candidate_thresholds(p)
        ok = [t for t in ts if at_threshold(p, y, t, cost_false_alarm, cost_miss).recall >= target_recall]
        t = float(max(ok))  # t = 0 always reaches recall 1
    else:
        raise ValueError(f"unknown threshold method {method!r}")
    return at_threshold(p, y, t, cost_false_alarm, cost_miss, prevalence)


# Intervals. One rule for every headline figure (docs/decisions.md): a seeded, stratified
# percentile bootstrap over the split, widened where it cannot see what the sample lacks.
INTERVAL_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed: training, `evaluate` and the report print the same interval
_Z95 = 1.959963984540054


def wilson(successes: float, n: float, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); (0, 1) when n is 0.

    Unlike a bootstrap it is not a point at 0 or n successes: 4 of 4 reads 0.51 to 1.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap(
    statistic: Callable[[np.ndarray], dict[str, float]],
    targets: object,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = INTERVAL_LEVEL,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of `statistic(indices)` over resamples of the split.

    Stratified: each resample draws the same number of each class with replacement, so the
    damage rate (and every per-class rate) stays defined. NaN draws are left out.
    """
    y = np.asarray(targets, dtype=np.int64)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in (0, 1)]
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups if len(g)])
        for k, v in statistic(idx).items():
            draws.setdefault(k, []).append(v)
    tail = 100 * (1 - level) / 2
    out = {}
    for k, vs in draws.items():
        a = np.asarray(vs, dtype=np.float64)
        a = a[~np.isnan(a)]
        out[k] = (float(np.percentile(a, tail)), float(np.percentile(a, 100 - tail))) if len(a) else (math.nan,) * 2
    return out


def _union(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    lo = b[0] if math.isnan(a[0]) else min(a[0], b[0])
    hi = b[1] if math.isnan(a[1]) else max(a[1], b[1])
    return lo, hi


def figure_intervals(
    probs: object,
    targets: object,
    threshold: float,
    cost_false_alarm: float,
    cost_miss: float,
    damage_rate: float | None,
    calibrated: object,
) -> dict[str, tuple[float, float]]:
    """95% intervals of the headline figures at `threshold`: recall, false_positive_rate,
    precision, expected_cost (per parcel at `damage_rate`), roc_auc, and ece (of
    `calibrated`, the probabilities at the split's own damage rate).

    The bootstrap alone reads a perfect score on 8 images as [1, 1]: it cannot draw an
    error the sample does not hold. So each rate's interval is at least its Wilson
    interval, the cost's at least the cost at the Wilson bounds of both error rates, and
    ROC-AUC's at least a Wilson interval on min(positives, negatives) images (its variance
    is at most AUC (1 - AUC) / min(m, n): Birnbaum and Klose, 1957).
    """
    from training.calibration import expected_calibration_error

    p, y = _arrays(probs, targets)
    c = np.asarray(calibrated, dtype=np.float64)

    def statistic(idx: np.ndarray) -> dict[str, float]:
        op = at_threshold(p[idx], y[idx], threshold, cost_false_alarm, cost_miss, damage_rate)
        return {
            "recall": op.recall,
            "false_positive_rate": op.false_positive_rate,
            "precision": op.precision if op.tp + op.fp else math.nan,
            "expected_cost": op.expected_cost,
            "roc_auc": roc_auc(p[idx], y[idx]),
            "ece": expected_calibration_error(c[idx], y[idx]),
        }

    out = bootstrap(statistic, y)
    op = at_threshold(p, y, threshold, cost_false_alarm, cost_miss, damage_rate)
    recall = wilson(op.tp, op.tp + op.fn)
    fpr = wilson(op.fp, op.fp + op.tn)
    out["recall"] = _union(out["recall"], recall)
    out["false_positive_rate"] = _union(out["false_positive_rate"], fpr)
    out["precision"] = _union(out["precision"], wilson(op.tp, op.tp + op.fp))
    rate = op.damage_rate
    cost_lo = expected_cost(fpr[0], 1 - recall[1], rate, cost_false_alarm, cost_miss)
    cost_hi = expected_cost(fpr[1], 1 - recall[0], rate, cost_false_alarm, cost_miss)
    out["expected_cost"] = _union(out["expected_cost"], (cost_lo, cost_hi))
    auc, m = roc_auc(p, y), min(int(y.sum()), int((1 - y).sum()))
    if m and not math.isnan(auc):
        out["roc_auc"] = _union(out["roc_auc"], wilson(auc * m, m))
    return out
