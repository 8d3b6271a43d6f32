"""Drift windows of the whole fleet: what each service replica writes to the store (its
window summary), how the replicas' summaries merge, and the report of one station's window
(decision rate, PSI per feature, the quality estimated without labels, alarms).

Shared by the service (`app.ops.drift`, `GET /v1/monitoring`) and by tools that read the
summaries from the store without a service. Imports nothing of `app`.

Two kinds of window, both keyed `(version, station)` (`Key`):
- `(version, station)`: the scores (and retakes) of the images `version` scored for the
  station: its decision rate, the PSI of its score and its estimated quality are the
  version's own.
- `(None, station)`: the image features the station's camera delivered (brightness,
  contrast, sharpness, width, height, aspect), whatever the model: they stay when another
  version is activated, so a failing camera keeps its alarm across a swap, and are judged
  against the served version's reference.

A summary (JSON, `SUMMARY_FORMAT`):

    {"format": 1, "replica": str, "written_at": unix s, "started_at": unix s,
     "served": version | null, "canary": version | null,
     "windows": [{"version": str | null, "station": str, "images": int,
                  "scores": [...], "retakes": [0/1, ...], "features": {feature: [...]}}],
     "comparisons": [{...}, ...]}

Values are rounded (`_DECIMALS`) to keep it compact, and the rows of all its windows
together are bounded (`MAX_SUMMARY_ROWS`, about 6 MB): a replica with more keeps the most
recent rows of each window.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_store import estimate as quality
from model_store import monitoring as mon
from model_store.manifest import DecisionSpec, Manifest, MonitoringSpec
from model_store.store.base import REPLICA_PATTERN

SUMMARY_FORMAT = 1
IMAGE_FEATURES = tuple(f for f in mon.FEATURES if f != "score")  # what the camera delivers
COST_ALARM = "cost_per_parcel"  # the name under `alarms` when the estimated cost is past its limit
# Rows (one image in one window) of all the windows of one summary: about 9 bytes per score
# row and 40 per image-feature row, so at most about 6 MB of JSON, under the store's bound.
MAX_SUMMARY_ROWS = 120_000
MAX_WINDOWS = 50_000  # per summary: far above 10,000 stations (APP_MAX_STATIONS' bound) times a few versions
# Decimals kept per value: the score's six keep decisions at a threshold as served (to 1e-6);
# image features need no more than a histogram bin can tell apart.
# Aspect unrounded: it takes few distinct values (cameras have a fixed frame), and a
# reference where every photo had one aspect cuts its histogram at exactly that value, so
# a rounded 4/3 would land outside the bin the exact 4/3 falls in: drift from rounding alone.
_DECIMALS: dict[str, int | None] = {
    "score": 6, "brightness": 2, "contrast": 2, "sharpness": 2, "width": 0, "height": 0, "aspect": None
}  # fmt: skip
UNASSIGNED = "unassigned"  # the service's window for requests that name no station
OTHER = "_other"  # stations beyond the service's `max_stations` share this window
FUTURE_SLACK_S = 300.0  # clocks of replicas and readers may differ by this much
_STATION_MAX = 128  # characters of a station name read from a summary (the edge allows 64)

Key = tuple[str | None, str]  # (version, station); version None: the station's image features
Estimates = dict[tuple[str, str], tuple[bytes, quality.Estimate | None]]  # (version, station) -> (digest, estimate)


@dataclass
class Window:
    """The most recent values of one key, oldest first. A score window fills `scores` and
    `retakes` (one each per image); an image window fills `features` (every one of
    `IMAGE_FEATURES`, one each per image); a window read from elsewhere may hold both."""

    scores: deque[float] = field(default_factory=deque)
    retakes: deque[bool] = field(default_factory=deque)  # per score: answered retake (outside the validated ranges)
    features: dict[str, deque[float]] = field(default_factory=dict)
    images: int = 0  # since the key first appeared (on this replica; summed when merged)

    @classmethod
    def bounded(cls, maxlen: int, *, image: bool) -> Window:
        """An empty window of at most `maxlen` rows: of image features (`image`) or of scores."""
        if image:
            return cls(deque(maxlen=0), deque(maxlen=0), {f: deque(maxlen=maxlen) for f in IMAGE_FEATURES})
        return cls(deque(maxlen=maxlen), deque(maxlen=maxlen), {})

    def __len__(self) -> int:
        return max([len(self.scores), *(len(v) for v in self.features.values())])

    def column(self, feature: str) -> list[float]:
        if feature == "score":
            return list(self.scores)
        return list(self.features.get(feature, ()))

    def copy(self) -> Window:
        """A copy (C-speed list copies, cheap enough on the event loop) for a thread to read."""
        return Window(
            deque(self.scores), deque(self.retakes), {f: deque(v) for f, v in self.features.items()}, self.images
        )

    def prepend(self, older: Window) -> None:
        """Put `older`'s rows before this window's (as far as its bound allows; the oldest
        go first) and add its images."""
        _prepend(self.scores, older.scores)
        _prepend(self.retakes, older.retakes)
        for f, theirs in older.features.items():
            if f in self.features:  # a score window keeps no image features
                _prepend(self.features[f], theirs)
        self.images += older.images


def _prepend(mine: deque[Any], older: Sequence[Any]) -> None:
    newer = list(mine)
    mine.clear()
    mine.extend(older)
    mine.extend(newer)


def merge_windows(*maps: Mapping[Key, Window]) -> dict[Key, Window]:
    """Every window of the same key concatenated (unbounded), images summed; the inputs are not changed."""
    out: dict[Key, Window] = {}
    for windows in maps:
        for key, w in windows.items():
            into = out.get(key)
            if into is None:
                out[key] = w.copy()
                continue
            into.scores.extend(w.scores)
            into.retakes.extend(w.retakes)
            for f, values in w.features.items():
                into.features.setdefault(f, deque()).extend(values)
            into.images += w.images
    return out


# --- summaries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """One replica's summary, validated (`parse_summary`)."""

    replica: str
    written_at: float  # unix seconds
    started_at: float  # when the replica started
    served: str | None  # the version it served when it wrote
    canary: str | None
    windows: dict[Key, Window]
    comparisons: list[dict[str, Any]]


@dataclass(frozen=True)
class Skipped:
    """A summary object that could not be used, and why (shown, never fatal)."""

    replica: str  # as the object names itself, or as the store names the object; "?" if neither
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"replica": self.replica, "reason": self.reason}


def summary(
    replica: str,
    started_at: float,
    windows: Mapping[Key, Window],
    comparisons: Sequence[Mapping[str, Any]],
    served: str | None,
    canary: str | None,
    *,
    now: float,
    max_rows: int = MAX_SUMMARY_ROWS,
) -> dict[str, Any]:
    """The summary a replica writes (a JSON-ready dict): its windows' columns, rounded, each
    cut to its most recent rows when all together hold more than `max_rows`."""
    keys = sorted(windows, key=lambda k: (k[0] or "", k[1]))[:MAX_WINDOWS]
    total = sum(len(windows[k]) for k in keys)
    keep = max(mon.MIN_IMAGES, max_rows // max(1, len(keys))) if total > max_rows else None
    out = []
    for version, station in keys:
        w = windows[(version, station)]
        out.append(
            {
                "version": version,
                "station": station,
                "images": w.images,
                "scores": _rounded(w.scores, "score", keep),
                "retakes": [int(r) for r in _tail(w.retakes, keep)],
                "features": {f: _rounded(v, f, keep) for f, v in w.features.items() if v},
            }
        )
    return {
        "format": SUMMARY_FORMAT,
        "replica": replica,
        "written_at": round(now, 3),
        "started_at": round(started_at, 3),
        "served": served,
        "canary": canary,
        "windows": out,
        "comparisons": [dict(c) for c in comparisons],
    }


def _tail(values: Sequence[Any], keep: int | None) -> Sequence[Any]:
    return values if keep is None or len(values) <= keep else list(values)[-keep:]


def _rounded(values: Sequence[float], feature: str, keep: int | None) -> list[float]:
    if not values:
        return []
    array = np.asarray(_tail(values, keep), dtype=np.float64)
    decimals = _DECIMALS[feature]
    # np.round divides by the power of ten, so each value's shortest repr is the short decimal.
    rounded: list[float] = (array if decimals is None else np.round(array, decimals)).tolist()
    return rounded


class InvalidSummary(ValueError):
    """Why a summary object cannot be used (the reason is the message)."""


def parse_summary(raw: object) -> Summary | None:
    """The summary in `raw` (a decoded JSON object), or None when it is malformed or of
    another format (`parse_summaries` says why)."""
    try:
        return read_summary(raw)
    except InvalidSummary:
        return None


def parse_summaries(raws: Iterable[object]) -> tuple[list[Summary], list[Skipped]]:
    """Every usable summary of `raws`, and every other one named with its reason."""
    good, skipped = [], []
    for raw in raws:
        try:
            good.append(read_summary(raw))
        except InvalidSummary as exc:
            name = raw.get("replica") if isinstance(raw, dict) else None
            skipped.append(Skipped(name if isinstance(name, str) and name else "?", str(exc)))
    return good, skipped


def read_summary(raw: object) -> Summary:
    """`parse_summary` that raises `InvalidSummary` with the reason."""
    if not isinstance(raw, dict):
        raise InvalidSummary(f"not a JSON object but {type(raw).__name__}")
    if "unreadable" in raw:  # the store could not decode the object (`Store.summaries`)
        raise InvalidSummary(f"unreadable: {raw['unreadable']}")
    if raw.get("format") != SUMMARY_FORMAT:
        raise InvalidSummary(f"format {raw.get('format')!r}; this reader knows format {SUMMARY_FORMAT}")
    replica = raw.get("replica")
    if not isinstance(replica, str) or not REPLICA_PATTERN.fullmatch(replica):
        raise InvalidSummary(f"replica {replica!r} is not a replica ID")
    written_at, started_at = _time(raw, "written_at"), _time(raw, "started_at")
    served, canary = _version(raw, "served"), _version(raw, "canary")
    windows_raw = raw.get("windows")
    if not isinstance(windows_raw, list) or len(windows_raw) > MAX_WINDOWS:
        raise InvalidSummary(f"windows: a list of at most {MAX_WINDOWS} expected")
    windows: dict[Key, Window] = {}
    for i, w in enumerate(windows_raw):
        key, window = _window(w, f"windows[{i}]")
        if key in windows:
            raise InvalidSummary(f"windows[{i}]: a second window for {key}")
        windows[key] = window
    comparisons = raw.get("comparisons", [])
    if not isinstance(comparisons, list) or len(comparisons) > MAX_WINDOWS:
        raise InvalidSummary(f"comparisons: a list of at most {MAX_WINDOWS} expected")
    for i, c in enumerate(comparisons):
        _comparison(c, f"comparisons[{i}]")
    return Summary(replica, written_at, started_at, served, canary, windows, comparisons)


COMPARISON_COUNTS = ("served", "images", "agree", "to_positive", "to_negative", "retake", "dropped", "failed")


def _comparison(c: object, where: str) -> None:
    """A canary comparison as a replica writes it: its run, its station, whole counts >= 0
    with at most as many agreements as images compared (a verdict reads them as evidence)."""
    if not isinstance(c, dict):
        raise InvalidSummary(f"{where}: an object expected")
    for name in ("version", "against"):
        if _version(c, name) is None:
            raise InvalidSummary(f"{where}: {name} missing")
    station = c.get("station")
    if not isinstance(station, str) or not 0 < len(station) <= _STATION_MAX:
        raise InvalidSummary(f"{where}: station {station!r} is not a station ID")
    for name in ("seq", *COMPARISON_COUNTS):
        value = c.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
            raise InvalidSummary(f"{where}: {name} must be a whole number >= 0, not {value!r}")
    if c.get("agree", 0) > c.get("images", 0):
        raise InvalidSummary(f"{where}: more agreements than images compared")


def fresh(summary: Summary, *, now: float, max_age_s: float) -> bool:
    """Written within `max_age_s` and not in the future: a replica whose clock runs ahead (or
    a hand-written `written_at`) must not stay fresh forever."""
    return -FUTURE_SLACK_S <= now - summary.written_at <= max_age_s


def _time(raw: dict[str, Any], name: str) -> float:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidSummary(f"{name}: a unix time expected, not {value!r}")
    return float(value)


def _version(raw: dict[str, Any], name: str) -> str | None:
    value = raw.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidSummary(f"{name}: a version or null expected")
    return value


def _window(w: object, where: str) -> tuple[Key, Window]:
    if not isinstance(w, dict):
        raise InvalidSummary(f"{where}: an object expected")
    version, station, images = w.get("version"), w.get("station"), w.get("images")
    if version is not None and not isinstance(version, str):
        raise InvalidSummary(f"{where}.version: a version or null expected")
    if not isinstance(station, str) or not 0 < len(station) <= _STATION_MAX or not station.isprintable():
        raise InvalidSummary(f"{where}.station: a station name expected")
    if isinstance(images, bool) or not isinstance(images, int) or images < 0:
        raise InvalidSummary(f"{where}.images: a count expected")
    scores = _numbers(w.get("scores", []), f"{where}.scores")
    retakes = w.get("retakes", [])
    if not isinstance(retakes, list) or len(retakes) != len(scores) or any(r not in (0, 1) for r in retakes):
        raise InvalidSummary(f"{where}.retakes: one 0 or 1 per score expected")
    features_raw = w.get("features", {})
    if not isinstance(features_raw, dict) or not set(features_raw) <= set(IMAGE_FEATURES):
        raise InvalidSummary(f"{where}.features: an object of {', '.join(IMAGE_FEATURES)} expected")
    features = {f: deque(_numbers(v, f"{where}.features.{f}")) for f, v in features_raw.items()}
    if len({len(v) for v in features.values()}) > 1:
        raise InvalidSummary(f"{where}.features: columns of different lengths")
    return (version, station), Window(deque(scores), deque(bool(r) for r in retakes), features, images)


def _numbers(values: object, where: str) -> list[float]:
    if not isinstance(values, list):
        raise InvalidSummary(f"{where}: a list of numbers expected")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise InvalidSummary(f"{where}: {v!r} is not a finite number")
    return [float(v) for v in values]


def latest(summaries: Iterable[Summary]) -> list[Summary]:
    """One summary per replica, its newest (two objects naming one replica: a copy left behind)."""
    newest: dict[str, Summary] = {}
    for s in summaries:
        if s.replica not in newest or s.written_at > newest[s.replica].written_at:
            newest[s.replica] = s
    return [newest[r] for r in sorted(newest)]


def merge(summaries: Iterable[Summary], *, now: float, max_age_s: float) -> dict[Key, Window]:
    """The fleet's windows: every fresh replica's window of the same key concatenated
    (images summed). Summaries older than `max_age_s` (a replica stopped, or cut off from
    the store) are left out; `replicas` still lists them."""
    return merge_windows(*(s.windows for s in latest(summaries) if fresh(s, now=now, max_age_s=max_age_s)))


def replicas(summaries: Iterable[Summary], *, now: float, max_age_s: float) -> list[dict[str, Any]]:
    """Per replica: when it last wrote, how long ago, whether it is stale (left out of `merge`),
    what it served, and how many windows it holds."""
    return [
        {
            "replica": s.replica,
            "written_at": s.written_at,
            "age_s": round(max(0.0, now - s.written_at), 3),
            "stale": not fresh(s, now=now, max_age_s=max_age_s),
            "started_at": s.started_at,
            "served": s.served,
            "canary": s.canary,
            "windows": len(s.windows),
        }
        for s in latest(summaries)
    ]


# --- the report of a station --------------------------------------------------------------


def station_report(
    manifest: Manifest,
    version: str,
    station: str,
    window: Window,
    cost_margin: float,
    image_window: Window | None = None,
    *,
    estimates: Estimates | None = None,
) -> dict[str, Any]:
    """What `GET /v1/monitoring` shows for one station of `version` (the bundle `manifest`):
    images and window, decision rate, retake rate, PSI per feature with warnings and alarms,
    the quality estimated without labels with its cost alarm, and the histograms.

    `window`: the version's scores for the station. `image_window`: the station's image
    features whatever the version (None: those of `window`, if it has any). `estimates`: a
    cache of estimates by window content, reused across calls (it is written to).
    """
    reference = manifest.monitoring
    decision = manifest.decision
    images = image_window if image_window is not None else window
    columns = {f: (window if f == "score" else images).column(f) for f in mon.FEATURES}
    decisions = [decision.decide(s) == decision.positive_label for s in columns["score"]]
    entry: dict[str, Any] = {
        "station": station,
        "version": version,
        "images": window.images,
        "window": len(window.scores),
        "image_window": len(columns[IMAGE_FEATURES[0]]),  # images behind the image features' PSI
        "decision_rate": sum(decisions) / len(decisions) if decisions else None,
        "expected_decision_rate": reference.decision_rate if reference else None,
        # Images outside the validated ranges (answered retake), against export's test split.
        "retake_rate": sum(window.retakes) / len(window.retakes) if window.retakes else None,
        "expected_retake_rate": expected_retake_rate(reference),
    }
    drift: dict[str, float] = {}
    if reference is not None:
        drift = {
            f: round(mon.psi(h, columns[f]), 4)
            for f, h in reference.features.items()
            if len(columns.get(f, ())) >= mon.MIN_IMAGES
        }
    entry["drift"] = drift
    entry["warnings"] = sorted(f for f, v in drift.items() if mon.PSI_WARN < v <= mon.PSI_ALARM)
    alarms = sorted(f for f, v in drift.items() if v > mon.PSI_ALARM)
    estimate = _estimate(version, station, window, decision, cost_margin, estimates)
    if estimate is not None:
        # The estimate rests on the probabilities being calibrated for these photos: images
        # unlike the validated ones void that (a moved damage rate only moves `score`).
        estimate["image_drift"] = [f for f in alarms if f != "score"]
    entry["estimate"] = estimate
    if estimate is not None and estimate["cost_alarm"]:
        alarms.append(COST_ALARM)
    entry["alarms"] = alarms
    entry["alarm"] = bool(alarms)
    entry["labelled"] = None  # inspectors' figures, filled in by the service when capture is on
    if reference is not None:
        entry["histograms"] = {
            f: {"cuts": h.cuts, "reference": h.fractions, "live": mon.fractions(h.cuts, columns[f])}
            for f, h in reference.features.items()
            if columns.get(f)
        }
    return entry


def report(
    manifest: Manifest,
    version: str,
    windows: Mapping[Key, Window],
    cost_margin: float,
    *,
    estimates: Estimates | None = None,
) -> list[dict[str, Any]]:
    """`station_report` of every station that has a window of `version` or image features,
    by station name."""
    stations = sorted({s for v, s in windows if v == version or v is None})
    return [
        station_report(
            manifest,
            version,
            s,
            windows.get((version, s), Window()),
            cost_margin,
            windows.get((None, s)),
            estimates=estimates,
        )
        for s in stations
    ]


def _estimate(
    version: str,
    station: str,
    w: Window,
    decision: DecisionSpec,
    cost_margin: float,
    estimates: Estimates | None,
) -> dict[str, Any] | None:
    """Expected precision, recall, false-alarm rate, cost per parcel and damage rate of the
    window's judged images (a retake gave no verdict), each with its 95% interval, and the
    cost alarm; None before `MIN_IMAGES` judged images."""
    judged = np.asarray([s for s, retake in zip(w.scores, w.retakes, strict=True) if not retake], dtype=np.float64)
    # By content, not by count: a merged window can change while its image count stays.
    digest = hashlib.blake2b(judged.tobytes(), digest_size=16).digest()
    cached = estimates.get((version, station)) if estimates is not None else None
    if cached is not None and cached[0] == digest:
        e = cached[1]
    else:
        e = quality.of_decisions(judged, decision) if len(judged) >= mon.MIN_IMAGES else None
        if estimates is not None:
            estimates[(version, station)] = (digest, e)
    if e is None:
        return None
    limit = quality.cost_limit(decision, cost_margin)
    return {
        "images": e.images,
        "served_damage_rate": e.served_rate,
        "level": quality.LEVEL,
        "figures": e.figures,
        "intervals": {f: list(v) if v is not None else None for f, v in e.intervals.items()},
        "expected_cost_per_parcel": decision.expected_cost,
        "cost_limit": limit,
        "cost_alarm": quality.cost_alarm(e, limit),
    }


def expected_retake_rate(reference: MonitoringSpec | None) -> float | None:
    """The share of export's test images answered retake, or None where not measured."""
    bounds = reference.domain if reference is not None else None
    if bounds is None or not bounds.test_images:
        return None
    return (bounds.test_retakes or 0) / bounds.test_images
