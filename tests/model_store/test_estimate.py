"""Quality without labels, measured: windows of labelled synthetic traffic at known damage
rates, scored by a model whose probabilities are calibrated for the served rate (3%), and
how often the realised figures fall inside the estimate's interval.

The traffic is `benchmarks.estimate.calibrated_traffic` (`python -m benchmarks.estimate
--synthetic` prints the whole table): a logit of N(0, 1) for an intact parcel and N(2.1, 1)
for a damaged one (ROC-AUC 0.93, the demo model's test figure), served as the exact Bayes
posterior at 3%. So at 3% the served probabilities are calibrated, and at 1% or 30% they are
off by exactly the prior, as at a real station whose damage rate moved (the looks of damaged
and intact parcels did not).
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.estimate import SYNTHETIC_SERVED as SERVED
from benchmarks.estimate import calibrated_traffic as traffic
from benchmarks.estimate import synthetic_decision
from model_store import estimate as est
from model_store.manifest import DecisionSpec

DECISION = synthetic_decision()
THRESHOLD = DECISION.threshold  # 1/6: the cost-optimal threshold on calibrated probabilities at 1 : 5
COSTS = (DECISION.cost_false_alarm, DECISION.cost_miss)
TRIALS = 150


def coverage(
    n: int, rate: float, served_rate: float | None = SERVED, trials: int = TRIALS, seed: int = 1
) -> dict[str, float]:
    """Per figure: the share of windows whose realised figure lies inside the interval."""
    rng = np.random.default_rng(seed)
    inside: dict[str, list[bool]] = {f: [] for f in est.FIGURES}
    for _ in range(trials):
        p, damaged = traffic(rng, n, rate)
        e = est.estimate(p, THRESHOLD, *COSTS, served_rate)
        assert e is not None
        real = est.realised(list(zip(p >= THRESHOLD, damaged, strict=True)), *COSTS)
        for f in est.FIGURES:
            interval, value = e.intervals[f], real[f]
            if interval is not None and value is not None:  # recall: a window with no damaged parcel has none
                inside[f].append(interval[0] <= value <= interval[1])
    return {f: float(np.mean(v)) for f, v in inside.items()}


@pytest.mark.slow
@pytest.mark.parametrize(("n", "rate"), [(500, 0.03), (500, 0.3), (500, 0.01), (100, 0.03), (100, 0.3)])
def test_the_interval_holds_the_realised_figures_at_the_served_rate_and_far_from_it(n: int, rate: float) -> None:
    got = coverage(n, rate)
    # 95% intervals; on 150 windows a true 95% reads below 0.89 once in about 500 runs.
    assert min(got.values()) >= 0.89, got


def test_probabilities_taken_as_served_miss_a_station_at_another_damage_rate() -> None:
    """Why the window's rate is inferred: at 30% damage the 3% probabilities undercount the
    damaged parcels, and an estimate that took them as calibrated covered almost nothing."""
    naive = coverage(500, 0.3, served_rate=None, trials=40)
    assert naive["cost_per_parcel"] < 0.1 and naive["precision"] < 0.1, naive


def test_the_damage_rate_is_inferred_from_the_window() -> None:
    rng = np.random.default_rng(2)
    for rate in (0.01, 0.03, 0.3):
        p, damaged = traffic(rng, 2000, rate)
        e = est.estimate(p, THRESHOLD, *COSTS, SERVED)
        assert e is not None and e.figures["damage_rate"] is not None
        assert e.figures["damage_rate"] == pytest.approx(damaged.mean(), abs=0.01 + 0.15 * rate)
        low, high = e.intervals["damage_rate"] or (0, 0)
        assert low <= damaged.mean() <= high


@pytest.mark.slow
def test_the_cost_alarm_is_quiet_at_the_served_rate_and_fires_at_ten_times_it() -> None:
    rng = np.random.default_rng(3)
    limit = est.cost_limit(DECISION, 0.5)  # its expected cost at 3%, measured on a million parcels, + 50%
    assert limit is not None
    for n, rate, interval_rule, expected_rule in [(500, SERVED, 0.02, 0.05), (100, SERVED, 0.02, 0.15)]:
        windows = [traffic(rng, n, rate)[0] for _ in range(TRIALS)]
        estimates = [est.estimate(w, THRESHOLD, *COSTS, SERVED) for w in windows]
        assert np.mean([est.cost_alarm(e, limit) for e in estimates]) <= interval_rule
        # What the docstring of `cost_alarm` says the expected figure alone would do.
        assert (
            np.mean([e is not None and (e.figures["cost_per_parcel"] or 0) > limit for e in estimates]) > expected_rule
        )
    shifted = [est.estimate(traffic(rng, 100, 0.3)[0], THRESHOLD, *COSTS, SERVED) for _ in range(50)]
    assert np.mean([est.cost_alarm(e, limit) for e in shifted]) >= 0.95
    assert est.cost_alarm(shifted[0], None) is False  # a bundle that states no expected cost: no alarm


def test_the_same_window_gets_the_same_estimate_and_an_empty_one_none() -> None:
    p, _ = traffic(np.random.default_rng(4), 300, SERVED)
    assert est.estimate(p, THRESHOLD, *COSTS, SERVED) == est.estimate(p, THRESHOLD, *COSTS, SERVED)
    assert est.estimate([], THRESHOLD, *COSTS, SERVED) is None


def test_a_window_with_nothing_flagged_has_no_precision() -> None:
    e = est.estimate([0.01] * 50, 0.5, *COSTS, SERVED)
    assert e is not None
    assert e.figures["precision"] is None and e.intervals["precision"] is None
    assert e.figures["false_alarm_rate"] == 0.0 and e.figures["recall"] == 0.0


def test_labelled_figures_use_the_same_definitions() -> None:
    # (flagged, damaged): 2 caught, 1 false alarm, 1 missed, 6 correctly passed
    pairs = [(True, True)] * 2 + [(True, False)] + [(False, True)] + [(False, False)] * 6
    got = est.realised(pairs, *COSTS)
    assert got == pytest.approx(
        {"damage_rate": 0.3, "precision": 2 / 3, "recall": 2 / 3, "false_alarm_rate": 1 / 7, "cost_per_parcel": 0.6}
    )
    assert est.realised([], *COSTS) == dict.fromkeys(est.FIGURES)


def test_the_served_rate_is_the_one_the_probabilities_were_shifted_to() -> None:
    base = DecisionSpec(threshold=0.5, method="fixed", cost_false_alarm=1, cost_miss=5)
    assert est.served_rate(base) is None  # schema 1: not known
    assert est.served_rate(base.model_copy(update={"validation_prevalence": 0.48})) == 0.48
    both = base.model_copy(update={"validation_prevalence": 0.48, "deployment_prevalence": 0.03})
    assert est.served_rate(both) == 0.03
    # shift() moves probabilities exactly as the served map does (DecisionSpec.logit_map).
    slope, offset = both.logit_map()
    at_validation = 1 / (1 + np.exp(-(slope * 1.3 + both.calibration.intercept)))
    served = 1 / (1 + np.exp(-(slope * 1.3 + offset)))
    assert est.shift(np.array([at_validation]), 0.48, 0.03)[0] == pytest.approx(served)
    assert est.cost_limit(both, 0.5) is None
    assert est.cost_limit(both.model_copy(update={"expected_cost": 0.1}), 0.5) == pytest.approx(0.15)
