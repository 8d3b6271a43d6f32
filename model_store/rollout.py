"""Station canaries: which stations a canary serves, and the policy that promotes or ends it.

A canary is a stored version that answers the requests of some stations (a list, or a
fraction chosen by a stable hash of the station ID, so a station stays on one side while
the fraction holds) while every other station is served by the active version. The
promotion policy is kept in the store beside the pointer; `model_store.rollout_check` (`canary check`)
evaluates it on the evidence every replica writes to the store.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model_store.capture import CaptureStore
from model_store.domain import RETAKE
from model_store.errors import InvalidPolicy, describe_validation_errors
from model_store.manifest import DecisionSpec

# A station ID, as stations name themselves (`X-Station-ID`) and as a canary lists them: the
# one rule for the service (app.edge.stations) and the store.
STATION_PATTERN = r"[A-Za-z0-9._-]{1,64}"


def station_share(station: str) -> float:
    """Where `station` falls in [0, 1): the same on every replica, every restart, every Python.

    A canary on a fraction f serves the stations whose share is below f, so raising f only
    adds stations (none flips back to the active version)."""
    digest = hashlib.sha256(station.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Policy(BaseModel):
    """When a canary is promoted to active or ended (rolled back), judged per canary station
    on the fleet's windows (every replica's summaries in the store).

    Promoted when every condition holds on every canary station; ended as soon as any
    station with enough images breaks one; otherwise the check waits for more evidence.
    One definition for the store, the CLI and the management API (its JSON schema too).
    """

    # strict: `true` is not 1, "200" is not 200; a float field still takes a whole number.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    min_images: int = Field(200, ge=0, description="images the canary must have decided at each canary station")
    max_cost_rise: float = Field(
        0.2,
        ge=0,
        allow_inf_nan=False,
        description="the canary's estimated cost per parcel at most this fraction above the active version's "
        "on the same stations (0.2: 20% higher)",
    )
    block_on_drift: bool = Field(
        True,
        description="an alarm at a canary station (drift of its images or scores, or its cost) holds the canary: "
        "the estimates rest on the images resembling the validated ones",
    )
    min_agreement: float = Field(
        0.9,
        ge=0,
        le=1,
        description="the least share of canary-station images on which the canary and the active version "
        "(scoring the same images in the background) take the same decision",
    )
    max_recall_drop: float = Field(
        0.05,
        ge=0,
        le=1,
        description="with min_labelled_damaged labelled damaged parcels for both versions, the canary's "
        "labelled recall at most this much below the active's",
    )
    min_labelled_damaged: int = Field(20, ge=0, description="labelled damaged parcels before recall counts")
    max_summary_age_s: float = Field(
        600.0, ge=0, allow_inf_nan=False, description="replica summaries older than this are not evidence"
    )

    @classmethod
    def from_dict(cls, raw: Any) -> Policy:
        """A policy from JSON (the store, the CLI, the management API); missing fields take
        their defaults, unknown fields and out-of-range values are refused with their name."""
        if not isinstance(raw, dict):
            raise InvalidPolicy("a promotion policy is a JSON object of its settings")
        unknown = sorted(str(k) for k in set(raw) - set(cls.model_fields))
        if unknown:
            raise InvalidPolicy(
                f"unknown promotion policy setting(s): {', '.join(unknown)} (known: {', '.join(cls.model_fields)})"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise InvalidPolicy(describe_validation_errors(exc.errors(), "policy")) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


PROMOTE, END, WAIT = "promote", "end", "wait"
# Fewer compared images than this say nothing about agreement (the comparison is dropped
# first under load, so a busy canary station may have fewer than it served).
MIN_COMPARED = 30


@dataclass(frozen=True)
class StationEvidence:
    """What the fleet saw at one canary station, from every replica's summaries."""

    station: str
    images: int  # judged images the canary decided here, in the fleet's windows
    canary_cost: float | None  # estimated cost per parcel of the canary's decisions
    active_cost: float | None  # the active version's on the same station's images, at the canary's costs
    # "window" (the active scored these images too), "bundle" (its expected cost, same costs) or "none"
    active_cost_source: str
    compared: int  # images both versions scored
    agreement: float | None
    alarms: tuple[str, ...]  # the canary's drift and cost alarms at this station


@dataclass(frozen=True)
class Verdict:
    action: str  # PROMOTE, END or WAIT
    reasons: tuple[str, ...]  # why, one line per station and condition
    stations: tuple[StationEvidence, ...]
    # "canary" / "active" -> {"damaged": labelled damaged parcels, "recall": of those flagged},
    # on the canary stations' captured requests that inspectors labelled (empty: no labels)
    labelled: dict[str, dict[str, Any]]

    def evidence(self, policy: Policy) -> dict[str, Any]:
        """The audit entry's evidence: the policy, the verdict and every station's figures."""
        return {
            "action": self.action,
            "policy": policy.to_dict(),
            "reasons": list(self.reasons),
            "stations": [asdict(s) for s in self.stations],
            "labelled": self.labelled,
        }


def judge(
    policy: Policy, stations: list[StationEvidence], labelled: dict[str, dict[str, Any]], *, every_station: bool = True
) -> Verdict:
    """Promote when every canary station meets every condition; end as soon as one station
    with enough images breaks a condition that compares the canary with the active version
    at the same station (cost, agreement) or labels (recall); otherwise wait.

    An alarm at a station (its images or scores unlike the validated ones, or a cost past
    the bundle's) only holds the canary: the station itself may have changed (a camera, a
    damage rate), which the active version would see as well, and the estimates no longer
    hold there. A canary that is itself worse shows in the comparison with the active.
    """
    if not stations:
        return Verdict(WAIT, ("no canary station has sent images yet",), (), labelled)
    fails: list[str] = []
    waits: list[str] = []
    judged = 0
    for s in stations:
        if s.images < policy.min_images:
            # A canary on chosen stations waits for each of them; one on a fraction of stations
            # is judged on those with enough images (a station that sent a few, or a client
            # inventing IDs that hash into the fraction, cannot hold it forever).
            if every_station:
                waits.append(f"{s.station}: {s.images} of {policy.min_images} images")
            continue
        judged += 1
        if s.canary_cost is not None and s.active_cost is not None:
            rise = (s.canary_cost - s.active_cost) / s.active_cost if s.active_cost > 0 else 0.0
            if s.canary_cost > s.active_cost and (s.active_cost == 0 or rise > policy.max_cost_rise):
                fails.append(
                    f"{s.station}: estimated cost per parcel {s.canary_cost:.4g} vs the active's "
                    f"{s.active_cost:.4g} ({rise:+.0%}, at most {policy.max_cost_rise:+.0%})"
                )
        else:
            waits.append(
                f"{s.station}: no estimate of {'the canary' if s.canary_cost is None else 'the active'}'s cost yet"
            )
        if s.alarms and policy.block_on_drift:
            waits.append(f"{s.station}: alarm on {', '.join(s.alarms)}; the estimates do not hold there")
        if s.compared < MIN_COMPARED or s.agreement is None:
            waits.append(f"{s.station}: {s.compared} of {MIN_COMPARED} images compared with the active version")
        elif s.agreement < policy.min_agreement:
            fails.append(
                f"{s.station}: agreement {s.agreement:.1%} with the active (at least {policy.min_agreement:.0%})"
            )
    if not judged and not every_station:
        waits.append(f"no canary station has {policy.min_images} images yet")
    fails.extend(_recall_fails(policy, labelled))
    if fails:
        return Verdict(END, tuple(fails), tuple(stations), labelled)
    if waits:
        return Verdict(WAIT, tuple(waits), tuple(stations), labelled)
    return Verdict(PROMOTE, ("every canary station meets the policy",), tuple(stations), labelled)


def _recall_fails(policy: Policy, labelled: dict[str, dict[str, Any]]) -> list[str]:
    """Labels take days: judged on all canary stations together, once both versions have
    `min_labelled_damaged` labelled damaged parcels there."""
    canary, active = labelled.get("canary"), labelled.get("active")
    if not canary or not active:
        return []
    if min(canary["damaged"], active["damaged"]) < policy.min_labelled_damaged:
        return []
    if canary["recall"] < active["recall"] - policy.max_recall_drop:
        return [
            f"labelled recall {canary['recall']:.1%} vs the active's {active['recall']:.1%} "
            f"(at most {policy.max_recall_drop:.0%} lower)"
        ]
    return []


def labelled_figures(
    capture: CaptureStore, stations: set[str], versions: dict[str, tuple[str, DecisionSpec]]
) -> dict[str, dict[str, Any]]:
    """Per role ("canary", "active" -> (version, its decision)): how many inspector-labelled
    damaged parcels the role's version decided at `stations`, and the share it flagged.

    Images answered retake got no verdict and are left out, as in `Capturer.feedback`.
    """
    labels = capture.labels()
    damaged: dict[str, list[bool]] = {role: [] for role in versions}  # per labelled damaged parcel: flagged?
    roles = {version: role for role, (version, _) in versions.items()}
    for record in capture.records():
        role = roles.get(record.get("version", ""))
        label = labels.get(record.get("request_id", ""))
        if role is None or label is None or record.get("station") not in stations:
            continue
        decision = versions[role][1]
        for image, truth in zip(record.get("images", []), label.get("labels", []), strict=False):
            if truth == decision.positive_label and image.get("decision") != RETAKE:
                damaged[role].append(image.get("decision") == decision.positive_label)
    return {
        role: {"version": versions[role][0], "damaged": len(flags), "recall": sum(flags) / len(flags)}
        for role, flags in damaged.items()
        if flags
    }
