"""`canary check`: judge the running canary by the store's promotion policy on the fleet's
evidence (every replica's window summaries in the store, `model_store.fleet`) and promote
or end it, the verdict in the audit entry (`model_store.rollout` holds the policy and the
verdict's rules). Runs as a CLI command (a Kubernetes CronJob) anywhere the store is
reachable: the service's memory is not needed, and two checks at once cannot both act.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model_store import estimate as quality
from model_store import fleet
from model_store import monitoring as mon
from model_store.bundle import Bundle
from model_store.capture import CaptureStore
from model_store.errors import StoreError
from model_store.manifest import Manifest
from model_store.parity import ParityProof
from model_store.rollout import END, PROMOTE, Policy, StationEvidence, Verdict, judge, labelled_figures
from model_store.store.base import AuditEntry, Canary, Store

# The cost alarm's margin over the bundle's expected cost, as the service's default
# (APP_COST_ALARM_MARGIN): a cost alarm on a canary station ends the canary.
DEFAULT_COST_MARGIN = 0.5


def gather(
    store: Store,
    canary: Canary,
    active: str,
    policy: Policy,
    *,
    now: float,
    capture: CaptureStore | None = None,
    cost_margin: float = DEFAULT_COST_MARGIN,
) -> tuple[list[StationEvidence], dict[str, dict[str, Any]]]:
    """Each canary station's evidence from every replica's summary in the store (not one
    replica's memory), and the labelled recall of both versions there when `capture` is given.

    Evidence counts for this canary run only (its `seq`: started, changed, or compared with
    another active version since). A canary on a list of stations is judged on every listed
    station (one that sends nothing keeps it waiting); one on a fraction, on the stations it
    has served in this run.
    """
    age = policy.max_summary_age_s
    summaries, _ = fleet.parse_summaries(store.summaries(newer_than=now - age))
    fresh = [s for s in fleet.latest(summaries) if fleet.fresh(s, now=now, max_age_s=age)]
    windows = fleet.merge(fresh, now=now, max_age_s=age)
    run: dict[str, list[int]] = {}  # station -> [served, compared, agreed] in this canary run, every replica
    for summary in fresh:
        for c in summary.comparisons:
            if (c["version"], c["against"], c.get("seq")) == (canary.version, active, canary.seq):
                counts = run.setdefault(c["station"], [0, 0, 0])
                for i, name in enumerate(("served", "images", "agree")):
                    counts[i] += c.get(name, 0)
    if canary.stations:
        stations = sorted(canary.stations)
    else:  # requests naming no station, and stations past the service's cap, are no station
        stations = sorted(s for s in run if canary.serves(s) and s not in (fleet.UNASSIGNED, fleet.OTHER))
    canary_manifest, active_manifest = store.manifest(canary.version), store.manifest(active)
    evidence = []
    for station in stations:
        mine = windows.get((canary.version, station), fleet.Window())
        report = fleet.station_report(
            canary_manifest, canary.version, station, mine, cost_margin, windows.get((None, station))
        )
        active_cost, source = _active_cost(windows.get((active, station)), active_manifest, canary_manifest)
        served, images, agree = run.get(station, [0, 0, 0])
        estimate = report["estimate"]
        evidence.append(
            StationEvidence(
                station=station,
                images=served,
                canary_cost=estimate["figures"]["cost_per_parcel"] if estimate is not None else None,
                active_cost=active_cost,
                active_cost_source=source,
                compared=images,
                agreement=agree / images if images else None,
                alarms=tuple(report["alarms"]),
            )
        )
    labelled: dict[str, dict[str, Any]] = {}
    if capture is not None:
        roles = {"canary": (canary.version, canary_manifest.decision), "active": (active, active_manifest.decision)}
        labelled = labelled_figures(capture, set(stations), roles)
    return evidence, labelled


def _active_cost(window: fleet.Window | None, active: Manifest, canary: Manifest) -> tuple[float | None, str]:
    """The active version's estimated cost per parcel on a canary station's images (it scores
    them in the background): its own threshold and probabilities, priced with the canary's
    costs, so a canary re-decided for other costs is compared on the costs it is meant for.
    Without a window, its bundle's expected cost if the costs are the same (else None)."""
    c, a = canary.decision, active.decision
    if window is not None:
        judged = [s for s, retake in zip(window.scores, window.retakes, strict=True) if not retake]
        if len(judged) >= mon.MIN_IMAGES:
            e = quality.estimate(judged, a.threshold, c.cost_false_alarm, c.cost_miss, quality.served_rate(a))
            cost = e.figures["cost_per_parcel"] if e is not None else None
            if cost is not None:
                return cost, "window"
    same_costs = (a.cost_false_alarm, a.cost_miss) == (c.cost_false_alarm, c.cost_miss)
    return (a.expected_cost, "bundle") if same_costs and a.expected_cost is not None else (None, "none")


@dataclass(frozen=True)
class Checked:
    canary: Canary
    active: str
    policy: Policy
    verdict: Verdict
    entry: AuditEntry | None  # the promotion or the end, when the check acted


def check(
    store: Store,
    *,
    actor: str,
    act: bool = True,
    capture: CaptureStore | None = None,
    cost_margin: float = DEFAULT_COST_MARGIN,
    prove: Callable[[Bundle], ParityProof] | None = None,
    now: float | None = None,
) -> Checked | None:
    """Judge the running canary by the stored policy on the fleet's evidence and, with `act`,
    promote it (after verifying and proving its bundle, as any activation) or end it, the
    verdict written into the audit entry. None when no canary runs.

    The store writes only if the canary is still the one judged (`expect_seq`): of two
    checks at once, one acts and the other fails with `StoreError`, changing nothing.
    """
    canary = store.canary()
    if canary is None:
        return None
    raw = store.policy()
    if raw is None:
        raise StoreError(
            "no promotion policy in the store: set one first "
            "(`python -m model_store canary policy --set '{\"min_images\": 200}'`, or PUT /v1/canary/policy)"
        )
    policy = Policy.from_dict(raw)
    active = store.active_version()
    if active is None:
        raise StoreError("the store has no active version to compare the canary with")
    stations, labelled = gather(
        store, canary, active, policy, now=time.time() if now is None else now, capture=capture, cost_margin=cost_margin
    )
    verdict = judge(policy, stations, labelled, every_station=bool(canary.stations))
    entry = None
    if act and verdict.action == PROMOTE:
        if prove is None:
            from model_store import activation  # torch loads only when a promotion needs it

            prove = activation.prove
        proof = prove(store.load(canary.version))
        entry = store.promote_canary(
            actor=actor,
            reason=f"policy: {verdict.reasons[0]}",
            proof=proof,
            expect_seq=canary.seq,
            evidence=verdict.evidence(policy),
        )
    elif act and verdict.action == END:
        entry = store.end_canary(
            actor=actor,
            reason="policy: " + "; ".join(verdict.reasons),
            expect_seq=canary.seq,
            evidence=verdict.evidence(policy),
        )
    return Checked(canary, active, policy, verdict, entry)
