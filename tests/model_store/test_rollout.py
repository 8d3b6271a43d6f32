"""The promotion policy: its settings from JSON, the stable station split, and the verdict on
evidence (the end-to-end canary loop lives in tests/app/test_canary_policy.py)."""

from __future__ import annotations

import dataclasses
from collections import deque

import pytest

from model_store import estimate as quality
from model_store.errors import StoreError
from model_store.fleet import Window
from model_store.rollout import END, PROMOTE, WAIT, Policy, StationEvidence, judge, station_share
from model_store.rollout_check import _active_cost
from tests.utils.factories import draft_manifest

POLICY = Policy(min_images=100, max_cost_rise=0.2, min_agreement=0.9, max_recall_drop=0.05, min_labelled_damaged=20)


def good(station: str = "dock-1", **changes: object) -> StationEvidence:
    e = StationEvidence(
        station=station,
        images=150,
        canary_cost=0.050,
        active_cost=0.048,
        active_cost_source="window",
        compared=140,
        agreement=0.97,
        alarms=(),
    )
    return dataclasses.replace(e, **changes)  # type: ignore[arg-type]


def test_a_station_stays_on_one_side_and_raising_the_fraction_only_adds_stations() -> None:
    stations = [f"dock-{i}" for i in range(2000)]
    shares = {s: station_share(s) for s in stations}
    assert shares == {s: station_share(s) for s in stations}  # stable across calls
    at_10 = {s for s in stations if shares[s] < 0.1}
    at_30 = {s for s in stations if shares[s] < 0.3}
    assert at_10 < at_30
    assert 0.07 < len(at_10) / len(stations) < 0.13  # a fraction of stations, roughly as asked


def test_policy_settings_from_json_refuse_unknown_and_out_of_range_values_by_name() -> None:
    assert Policy.from_dict({}) == Policy()
    assert Policy.from_dict({"min_images": 50, "block_on_drift": False}).min_images == 50
    for bad, named in [
        ({"min_imgs": 5}, "min_imgs"),
        ({"min_images": -1}, "min_images"),
        ({"min_images": 2.5}, "min_images"),
        ({"max_cost_rise": "high"}, "max_cost_rise"),
        ({"block_on_drift": 1}, "block_on_drift"),
        ({"min_agreement": 1.5}, "min_agreement"),
        ({"max_cost_rise": float("nan")}, "max_cost_rise"),
    ]:
        with pytest.raises(StoreError, match=named):
            Policy.from_dict(bad)
    with pytest.raises(StoreError, match="JSON object"):
        Policy.from_dict(["min_images", 5])


def test_a_canary_meeting_every_condition_on_every_station_is_promoted() -> None:
    verdict = judge(POLICY, [good("dock-1"), good("dock-2")], {})
    assert verdict.action == PROMOTE
    assert [s["station"] for s in verdict.evidence(POLICY)["stations"]] == ["dock-1", "dock-2"]


def test_too_few_images_or_comparisons_wait_for_evidence() -> None:
    assert judge(POLICY, [], {}).action == WAIT
    v = judge(POLICY, [good("dock-1"), good("dock-2", images=40)], {})
    assert v.action == WAIT and "dock-2: 40 of 100 images" in v.reasons[0]
    assert judge(POLICY, [good(compared=10, agreement=0.5)], {}).action == WAIT


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"canary_cost": 0.090}, "estimated cost per parcel 0.09 vs the active's 0.048"),
        ({"agreement": 0.7}, "agreement 70.0%"),
    ],
)
def test_a_worse_canary_is_ended_with_the_reason(changes: dict[str, object], says: str) -> None:
    verdict = judge(POLICY, [good("dock-1"), good("dock-2", **changes)], {})
    assert verdict.action == END
    assert any(r.startswith("dock-2: ") and says in r for r in verdict.reasons), verdict.reasons


def test_one_failing_station_ends_the_canary_even_while_another_still_waits() -> None:
    assert judge(POLICY, [good("dock-1", images=3), good("dock-2", agreement=0.5)], {}).action == END


def test_a_cost_rise_within_the_policy_and_a_cheaper_canary_pass() -> None:
    assert judge(POLICY, [good(canary_cost=0.048 * 1.19)], {}).action == PROMOTE
    assert judge(POLICY, [good(canary_cost=0.01)], {}).action == PROMOTE


@pytest.mark.parametrize("alarm", ["brightness", "score", "cost_per_parcel"])
def test_an_alarm_at_a_canary_station_holds_the_canary_instead_of_judging_it(alarm: str) -> None:
    """The station changed (a camera, its damage rate): the estimates do not hold there."""
    v = judge(POLICY, [good(alarms=(alarm,))], {})
    assert v.action == WAIT and f"dock-1: alarm on {alarm}" in v.reasons[0]
    relaxed = POLICY.model_copy(update={"block_on_drift": False})
    assert judge(relaxed, [good(alarms=(alarm,))], {}).action == PROMOTE


def test_labelled_recall_counts_only_once_enough_damaged_parcels_are_labelled() -> None:
    worse = {"canary": {"damaged": 30, "recall": 0.70}, "active": {"damaged": 40, "recall": 0.80}}
    v = judge(POLICY, [good()], worse)
    assert v.action == END and "labelled recall 70.0% vs the active's 80.0%" in v.reasons[0]
    few = {"canary": {"damaged": 5, "recall": 0.0}, "active": {"damaged": 40, "recall": 0.80}}
    assert judge(POLICY, [good()], few).action == PROMOTE
    close = {"canary": {"damaged": 30, "recall": 0.77}, "active": {"damaged": 40, "recall": 0.80}}
    assert judge(POLICY, [good()], close).action == PROMOTE


def test_the_active_versions_cost_on_a_canary_station_is_priced_at_the_canarys_costs() -> None:
    """A canary re-decided for misses costing 10 must be compared with the active version's
    decisions priced the same way, not with the active's own (cheaper) view of a miss: on
    the demo that difference alone turned a cheaper canary into a 71% dearer one."""
    base = draft_manifest("a1")
    decision = base.decision.model_copy(
        update={"threshold": 0.5, "validation_prevalence": 0.5, "deployment_prevalence": 0.5, "expected_cost": 0.3}
    )
    active = base.model_copy(update={"decision": decision})
    canary = base.model_copy(update={"decision": decision.model_copy(update={"cost_miss": 10.0, "threshold": 0.2})})
    scores = [i / 100 for i in range(1, 100)]
    window = Window(deque(scores), deque([False] * len(scores)))
    cost, source = _active_cost(window, active, canary)
    at_canary_costs = quality.estimate(scores, 0.5, canary.decision.cost_false_alarm, 10.0, 0.5)
    at_own_costs = quality.estimate(scores, 0.5, decision.cost_false_alarm, decision.cost_miss, 0.5)
    assert at_canary_costs is not None and at_own_costs is not None
    assert source == "window" and cost is not None
    assert cost == pytest.approx(at_canary_costs.figures["cost_per_parcel"])
    assert cost > 1.5 * (at_own_costs.figures["cost_per_parcel"] or 0)
    # No window: the bundle's expected cost only stands in when both price errors alike.
    assert _active_cost(None, active, canary) == (None, "none")
    assert _active_cost(None, active, active) == (0.3, "bundle")


def test_a_fraction_canary_is_judged_on_its_stations_with_enough_images() -> None:
    """A station that sent a few images (or a client inventing IDs that hash into the
    fraction) must not hold a canary on a fraction of stations forever; a canary on chosen
    stations waits for every one of them."""
    stations = [good("dock-1"), good("dock-7", images=3, compared=3, agreement=0.0)]
    assert judge(POLICY, stations, {}, every_station=False).action == PROMOTE
    assert judge(POLICY, stations, {}, every_station=True).action == WAIT
    few = judge(POLICY, [good("dock-7", images=3)], {}, every_station=False)
    assert few.action == WAIT and "no canary station has 100 images yet" in few.reasons
