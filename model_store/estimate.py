"""Quality without labels: precision, recall, false-alarm rate and cost per parcel of a
window of served decisions, from the served (calibrated) probabilities alone.

A calibrated probability q is the chance the parcel is damaged, so over a window of images
decided at threshold t the expected counts are

    TP = sum(q, p >= t)    FP = sum(1 - q, p >= t)    FN = sum(q, p < t)    TN = sum(1 - q, p < t)

and the figures follow from them (confidence-based performance estimation, CBPE). The served
probabilities p are for the bundle's deployment damage rate; at a station whose share of
damaged parcels is another (a returns dock, a bad week at a carrier) they are off by
exactly that prior, and an estimate that took them as they are would be confidently wrong
(measured: no interval covered the realised figures at 30% damage with a 3% bundle). So the
window's own damage rate is inferred first, under label shift: damaged parcels look as they
did at validation, and intact ones too; only their share moved (Saerens, Latinne &
Decaestecker, 2002). Each image's likelihood ratio damaged : intact is p/(1-p) over the
served rate's odds, the window's likelihood of a rate r is prod(r * ratio + 1 - r), and
with a Jeffreys prior, Beta(1/2, 1/2), that gives the rate's posterior on a grid. Each
probability is moved to a rate by Bayes' rule on the odds (`shift`), and q is its average
over the posterior: the chance this parcel is damaged, given everything in the window.

The interval is for the figure the labels will show once they arrive (the realised one),
not for its expectation: each of `draws` draws takes a rate from the posterior, then every
image's label from its probability at that rate (Poisson-binomial: which parcels turn out
damaged), and the figures of those labels; the interval holds the middle `level` of them.
Seeded, so the same window always gets the same interval. The decision is what was served
(p >= t) and never moves with the estimate.

`realised` applies the same definitions to inspectors' labels, so the two stand side by
side. This module imports nothing of `app` or `training`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model_store.manifest import DecisionSpec

FIGURES = ("damage_rate", "precision", "recall", "false_alarm_rate", "cost_per_parcel")
DRAWS = 400  # posterior-predictive draws per window; the 2.5% and 97.5% points rest on 10 draws each
LEVEL = 0.95
SEED = 0
_CLIP = 1e-9  # probabilities of exactly 0 or 1 (a float32 sigmoid) would make the odds infinite
# The damage rate's posterior lives on the log-odds (a rate of 1e-4 is as distinct from 1e-3
# as 0.1 from 0.5), from -10 to 10 (rates 4.5e-5 to 1 - 4.5e-5): first in steps of 0.5, then
# in steps of 1/16 (a rate known to 6% of itself) where the first pass found weight.
_COARSE = np.linspace(-10.0, 10.0, 41)
_FINE_STEP = 1 / 16
_NEGLIGIBLE = 1e-7  # rates whose posterior weight is below this share of the largest are dropped
_CHUNK = 4096  # images at a time: 400 draws x 4,096 images of float32 is 6.5 MB


@dataclass(frozen=True)
class Estimate:
    images: int  # judged images in the window (the caller leaves out those answered retake)
    served_rate: float | None  # the damage rate the served probabilities are for (None: not known)
    figures: dict[str, float | None]  # FIGURES -> expected value (None: undefined, e.g. nothing flagged)
    intervals: dict[str, tuple[float, float] | None]  # FIGURES -> `level` interval for the realised figure


def shift(probabilities: np.ndarray, from_rate: float, to_rate: np.ndarray | float) -> np.ndarray:
    """Probabilities for a damage rate of `to_rate` instead of `from_rate` (Bayes' rule on the
    odds: the log-odds move by the difference of the rates' log-odds). Broadcasts."""
    p = np.clip(probabilities, _CLIP, 1 - _CLIP)
    to = np.clip(np.asarray(to_rate, dtype=np.float64), _CLIP, 1 - _CLIP)
    logit = np.log(p / (1 - p)) + (np.log(to / (1 - to)) - math.log(from_rate / (1 - from_rate)))
    out: np.ndarray = 1 / (1 + np.exp(-logit))
    return out


def rate_posterior(probabilities: np.ndarray, served_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(rates, weights): the posterior of the window's damage rate on a grid, for probabilities
    served at `served_rate`, under label shift with a Jeffreys prior (rates of negligible
    weight left out; the weights sum to 1)."""
    p = np.clip(probabilities, _CLIP, 1 - _CLIP)
    excess = p / (1 - p) * ((1 - served_rate) / served_rate) - 1  # likelihood ratio - 1, at least -1

    def weights(log_odds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rates = 1 / (1 + np.exp(-log_odds))
        # Jeffreys prior Beta(1/2, 1/2) as a density on the log-odds: r^(1/2) (1 - r)^(1/2).
        log_post = 0.5 * np.log(rates * (1 - rates))
        for part in _chunks(len(p)):
            log_post += np.log1p(rates[:, None] * excess[None, part]).sum(axis=1)
        w = np.exp(log_post - log_post.max())
        return rates, w

    _, coarse = weights(_COARSE)
    where = np.flatnonzero(coarse > _NEGLIGIBLE)
    step = _COARSE[1] - _COARSE[0]
    lo, hi = max(_COARSE[0], _COARSE[where[0]] - step), min(_COARSE[-1], _COARSE[where[-1]] + step)
    rates, w = weights(np.arange(lo, hi + _FINE_STEP / 2, _FINE_STEP))
    keep = w > _NEGLIGIBLE
    return rates[keep], w[keep] / w[keep].sum()


def _chunks(n: int) -> list[slice]:
    """Slices of a window's images small enough that [grid points or draws, images] arrays
    stay a few megabytes however long the window (APP_MONITOR_WINDOW allows 100,000)."""
    return [slice(i, min(i + _CHUNK, n)) for i in range(0, n, _CHUNK)]


def _figures(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray, cost_fa: float, cost_miss: float
) -> dict[str, np.ndarray]:
    """The figures from (expected or drawn) counts, NaN where undefined."""
    n = tp + fp + fn + tn
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "damage_rate": (tp + fn) / n,
            "precision": tp / (tp + fp),
            "recall": tp / (tp + fn),
            "false_alarm_rate": fp / (fp + tn),
            "cost_per_parcel": (cost_fa * fp + cost_miss * fn) / n,
        }


def estimate(
    probabilities: Sequence[float] | np.ndarray,
    threshold: float,
    cost_false_alarm: float,
    cost_miss: float,
    served_rate: float | None,
    *,
    draws: int = DRAWS,
    level: float = LEVEL,
    seed: int = SEED,
) -> Estimate | None:
    """Expected figures of `probabilities` served at `served_rate` and decided at `threshold`,
    each with a `level` interval for the realised figure; None for an empty window.

    `served_rate` None (a bundle that does not say which rate its probabilities are for):
    they are taken as they are, as calibrated for this window, and no rate is inferred.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    n = len(p)
    if n == 0:
        return None
    flagged = p >= threshold
    rng = np.random.default_rng(seed)
    if served_rate is None:
        rates, weights = np.array([np.nan]), np.ones(1)

        def at(rows: np.ndarray, part: slice) -> np.ndarray:
            return np.broadcast_to(p[part], (len(rows), len(p[part])))
    else:
        rates, weights = rate_posterior(p, served_rate)

        def at(rows: np.ndarray, part: slice) -> np.ndarray:
            return shift(p[None, part], served_rate, rates[rows, None])

    drawn_rates = rng.choice(len(rates), size=draws, p=weights)
    every = np.arange(len(rates))
    expected_counts = np.zeros(4)  # tp, fp, fn, tn
    drawn_counts = np.zeros((3, draws))  # tp, damaged, flagged
    for part in _chunks(n):
        q = weights @ at(every, part)  # each image's chance of being damaged, over the rate's posterior
        f = flagged[part]
        expected_counts += [q[f].sum(), (1 - q[f]).sum(), q[~f].sum(), (1 - q[~f]).sum()]
        damaged = rng.random((draws, len(q)), dtype=np.float32) < at(drawn_rates, part)
        drawn_counts += [(damaged & f).sum(axis=1), damaged.sum(axis=1), np.full(draws, f.sum())]
    e = expected_counts[:, None]
    expected = _figures(e[0], e[1], e[2], e[3], cost_false_alarm, cost_miss)
    tp, damaged_n, flagged_n = drawn_counts
    drawn = _figures(tp, flagged_n - tp, damaged_n - tp, n - flagged_n - damaged_n + tp, cost_false_alarm, cost_miss)
    tail = (1 - level) / 2
    figures: dict[str, float | None] = {}
    intervals: dict[str, tuple[float, float] | None] = {}
    for name in FIGURES:
        value = float(expected[name][0])
        figures[name] = None if math.isnan(value) else value
        values = drawn[name][~np.isnan(drawn[name])]
        # Recall needs a damaged parcel in the window: its interval is over the draws that
        # have one, and none when most have not (a short window at a low rate).
        if figures[name] is None or len(values) < draws / 2:
            intervals[name] = None
            continue
        low, high = np.quantile(values, [tail, 1 - tail], method="inverted_cdf")
        intervals[name] = (float(low), float(high))
    return Estimate(n, served_rate, figures, intervals)


def served_rate(decision: DecisionSpec) -> float | None:
    """The damage rate a bundle's served probabilities are for: the deployment rate when the
    prior shift to it is applied (`DecisionSpec.logit_map`), else the validation split's own,
    else unknown (None: schema 1 bundles)."""
    if decision.validation_prevalence is not None and decision.deployment_prevalence is not None:
        return decision.deployment_prevalence
    return decision.validation_prevalence


def of_decisions(probabilities: Sequence[float] | np.ndarray, decision: DecisionSpec) -> Estimate | None:
    """`estimate` of probabilities a bundle served: its threshold, costs and served rate."""
    return estimate(
        probabilities, decision.threshold, decision.cost_false_alarm, decision.cost_miss, served_rate(decision)
    )


def cost_limit(decision: DecisionSpec, margin: float) -> float | None:
    """The cost per parcel above which a window raises an alarm: the bundle's expected cost at
    its deployment rate, `margin` above it (0.5: 50%); None when the bundle states none."""
    return None if decision.expected_cost is None else decision.expected_cost * (1 + margin)


def cost_alarm(est: Estimate | None, limit: float | None) -> bool:
    """True when the whole interval of the window's cost per parcel lies above `limit`.

    Not the expected figure alone: at 3% damage a window of 500 images holds about 15
    damaged parcels, give or take 4, each a miss or not, so windows from a station exactly
    as validated vary by chance. On calibrated synthetic traffic at a 50% margin, an alarm
    on the expected figure fired in 9% of such windows of 500 images and 29% of windows of
    100; this rule in 0.2% and 0.5%, and in 98% of windows of 100 at 30% damage
    (`python -m benchmarks.estimate --synthetic`).
    """
    interval = est.intervals["cost_per_parcel"] if est is not None else None
    return limit is not None and interval is not None and interval[0] > limit


def realised(pairs: Sequence[tuple[bool, bool]], cost_false_alarm: float, cost_miss: float) -> dict[str, float | None]:
    """The same figures on labelled images, from (flagged, damaged) per image."""
    tp = sum(f and d for f, d in pairs)
    fp = sum(f and not d for f, d in pairs)
    fn = sum(d and not f for f, d in pairs)
    counts = np.array([[tp], [fp], [fn], [len(pairs) - tp - fp - fn]], dtype=np.float64)
    values = _figures(counts[0], counts[1], counts[2], counts[3], cost_false_alarm, cost_miss)
    return {name: None if math.isnan(v := float(values[name][0])) else v for name in FIGURES}
