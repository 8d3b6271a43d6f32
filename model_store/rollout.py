"""Station canaries: which stations a canary serves, and the policy that promotes or ends it.

A canary is a stored version that answers the requests of some stations (a list, or a
fraction chosen by a stable hash of the station ID, so a station stays on one side while
the fraction holds) while every other station is served by the active version. The
promotion policy is kept in the store beside the pointer; `canary check`
evaluates it on the evidence every replica writes to the store.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from typing import Any

from model_store.errors import StoreError

# A station ID, as stations name themselves (`X-Station-ID`) and as a canary lists them: the
# one rule for the service (app.edge.stations) and the store.
STATION_PATTERN = r"[A-Za-z0-9._-]{1,64}"


def station_share(station: str) -> float:
    """Where `station` falls in [0, 1): the same on every replica, every restart, every Python.

    A canary on a fraction f serves the stations whose share is below f, so raising f only
    adds stations (none flips back to the active version)."""
    digest = hashlib.sha256(station.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Policy:
    """When a canary is promoted to active or ended (rolled back), judged per canary station
    on the fleet's windows (every replica's summaries in the store).

    Promoted when every condition holds on every canary station; ended as soon as any
    station with enough images breaks one; otherwise the check waits for more evidence.
    """

    # Judged images (not answered retake) the canary must have decided at each canary station.
    min_images: int = 200
    # The largest allowed rise of the canary's estimated cost per parcel over the active
    # version's on the same stations, as a fraction of the active's (0.2: 20% higher).
    max_cost_rise: float = 0.2
    # A drift alarm (images or scores unlike the validated ones) on a canary station blocks
    # promotion: the estimates rest on the images resembling the validated ones.
    block_on_drift: bool = True
    # The least share of canary-station images on which the canary and the active version
    # (scoring the same images in the background) take the same decision.
    min_agreement: float = 0.9
    # With at least `min_labelled_damaged` inspector-labelled damaged parcels for both
    # versions, the canary's labelled recall may be at most this much below the active's.
    max_recall_drop: float = 0.05
    min_labelled_damaged: int = 20
    # Summaries older than this are not evidence (a replica that stopped writing).
    max_summary_age_s: float = 600.0

    @classmethod
    def from_dict(cls, raw: Any) -> Policy:
        """A policy from JSON (the store, the CLI, the management API); missing fields take
        their defaults, unknown fields and out-of-range values are refused with their name."""
        if not isinstance(raw, dict):
            raise StoreError("a promotion policy is a JSON object of its settings")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise StoreError(f"unknown promotion policy setting(s): {', '.join(unknown)} (known: {', '.join(known)})")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            default = getattr(cls, name)
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise StoreError(f"policy {name} must be true or false, not {value!r}")
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise StoreError(f"policy {name} must be a whole number >= 0, not {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
                raise StoreError(f"policy {name} must be a number >= 0, not {value!r}")
            values[name] = value
        policy = cls(**values)
        if policy.min_agreement > 1 or policy.max_recall_drop > 1:
            raise StoreError("policy min_agreement and max_recall_drop are shares, at most 1")
        return policy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
