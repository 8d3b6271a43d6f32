"""Drift per station: windows of live features compared with the bundle's reference, and
the quality of the served decisions estimated from their probabilities (no labels needed:
`model_store.estimate`).

A request's station comes from the edge (`app.edge.stations`); requests that name none
count as `unassigned`. At most `max_stations` stations get windows of their
own; further ones share `_other`, so a client inventing IDs cannot grow memory.

Recording is a few list appends per image on the event loop; PSI and the estimates are
computed only when someone asks (`GET /v1/monitoring`, a Prometheus scrape), in a thread,
from a copy of the windows taken on the loop; for scrapes (anonymous), at most once per
`GAUGES_CACHE_S` however many scrapers ask. An estimate (a few milliseconds per station)
is kept until its window changes, so idle stations cost nothing after the first time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.ops.model_host import Loaded
from app.serving.pipeline import Scored
from model_store import estimate as quality
from model_store import monitoring as mon
from model_store.manifest import DecisionSpec, MonitoringSpec
from model_store.preprocessing import ImageInfo

UNASSIGNED = "unassigned"  # requests that name no station
OTHER = "_other"  # stations beyond `max_stations` share this window
GAUGES_CACHE_S = 5.0  # Prometheus scrapes every 15-60 s; four scrapers must not cost four computations
COST_ALARM = "cost_per_parcel"  # the name under `alarms` when the estimated cost is past its limit
Gauges = dict[str, list[tuple[tuple[str, ...], float]]]  # metric family -> (label values, value)
Estimates = dict[tuple[str, str], tuple[int, quality.Estimate | None]]  # (version, station) -> (images, estimate)


@dataclass
class Window:
    rows: deque[tuple[float, ...]]  # one value per feature of `monitoring.FEATURES`, most recent last
    retakes: deque[bool]  # per row: answered retake (outside the validated ranges)
    images: int = 0  # since the station first appeared for this version

    def column(self, feature: str) -> list[float]:
        i = mon.FEATURES.index(feature)
        return [row[i] for row in self.rows]


@dataclass
class Monitor:
    window: int = 500  # images per station and version
    max_stations: int = 256
    cost_margin: float = 0.5  # the cost alarm's margin above the bundle's expected cost (APP_COST_ALARM_MARGIN)
    windows: dict[tuple[str, str], Window] = field(default_factory=dict)  # (version, station)
    stations: set[str] = field(default_factory=set)
    _estimates: Estimates = field(default_factory=dict)  # written by the report threads, one key at a time
    _gauges: tuple[float, str, Gauges] | None = None  # (monotonic time, version, gauges)
    _gauges_run: asyncio.Future[Gauges] | None = None

    def record(
        self, loaded: Loaded, station: str, images: Sequence[tuple[str, bytes, ImageInfo]], scores: Sequence[Scored]
    ) -> None:
        if self.window <= 0:
            return
        if station not in self.stations:
            if len(self.stations) >= self.max_stations:
                station = OTHER
            self.stations.add(station)
        key = (loaded.version, station)
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = Window(deque(maxlen=self.window), deque(maxlen=self.window))
        for (_, _, info), s in zip(images, scores, strict=True):
            if s.stats is None:
                continue
            f = mon.features(s.stats, info.width, info.height, s.probability)
            w.rows.append(tuple(f[name] for name in mon.FEATURES))
            w.retakes.append(s.retake is not None)
            w.images += 1

    def forget(self, keep: set[str]) -> None:
        """Drop the windows of versions no longer served or shadowed."""
        self.windows = {k: w for k, w in self.windows.items() if k[0] in keep}
        self._estimates = {k: e for k, e in self._estimates.items() if k[0] in keep}

    def _snapshot(self, version: str) -> list[tuple[str, Window]]:
        """Copies of one version's windows (C-speed list copies, on the loop), for a thread to read."""
        return [
            (station, Window(deque(w.rows), deque(w.retakes), w.images))
            for (v, station), w in sorted(self.windows.items())
            if v == version
        ]

    async def report(self, loaded: Loaded) -> list[dict[str, object]]:
        """Per station of the served version: window, decision rate, PSI per feature, the
        estimated quality, alarms."""
        return await asyncio.to_thread(
            _report, loaded, self._snapshot(loaded.version), self.cost_margin, self._estimates
        )

    async def refresh_gauges(self, loaded: Loaded | None) -> None:
        """Recompute the scrape's gauges (PSI, estimates) if older than `GAUGES_CACHE_S`: one
        computation at a time, in a thread; concurrent scrapes wait for the same one."""
        if loaded is None:
            self._gauges = None
            return
        cached = self._gauges
        if cached is not None and cached[1] == loaded.version and time.monotonic() - cached[0] < GAUGES_CACHE_S:
            return
        run = self._gauges_run
        if run is None:
            run = self._gauges_run = asyncio.ensure_future(
                asyncio.to_thread(_gauges, loaded, self._snapshot(loaded.version), self.cost_margin, self._estimates)
            )

            def done(f: asyncio.Future[Gauges]) -> None:
                self._gauges_run = None
                if not f.cancelled() and f.exception() is None:
                    self._gauges = (time.monotonic(), loaded.version, f.result())

            run.add_done_callback(done)
        await asyncio.shield(run)

    def gauges(self, loaded: Loaded | None) -> Gauges:
        """Metric family -> (label values, value) for Prometheus, as last computed by `refresh_gauges`."""
        cached = self._gauges
        if loaded is None or cached is None or cached[1] != loaded.version:
            return {}
        return cached[2]


def _report(
    loaded: Loaded, windows: list[tuple[str, Window]], cost_margin: float, estimates: Estimates
) -> list[dict[str, object]]:
    reference = loaded.manifest.monitoring
    decision = loaded.manifest.decision
    positive = decision.positive_label
    out: list[dict[str, object]] = []
    for station, w in windows:
        decisions = [decision.decide(s) == positive for s in w.column("score")]
        entry: dict[str, object] = {
            "station": station,
            "version": loaded.version,
            "images": w.images,
            "window": len(w.rows),
            "decision_rate": sum(decisions) / len(decisions) if decisions else None,
            "expected_decision_rate": reference.decision_rate if reference else None,
            # Images outside the validated ranges (answered retake), against export's test split.
            "retake_rate": sum(w.retakes) / len(w.retakes) if w.retakes else None,
            "expected_retake_rate": _expected_retake_rate(reference),
        }
        drift: dict[str, float] = {}
        if reference is not None and len(w.rows) >= mon.MIN_IMAGES:
            drift = {f: round(mon.psi(h, w.column(f)), 4) for f, h in reference.features.items()}
        entry["drift"] = drift
        entry["warnings"] = sorted(f for f, v in drift.items() if mon.PSI_WARN < v <= mon.PSI_ALARM)
        alarms = sorted(f for f, v in drift.items() if v > mon.PSI_ALARM)
        estimate = _estimate(loaded.version, station, w, decision, cost_margin, estimates)
        if estimate is not None:
            # The estimate rests on the probabilities being calibrated for these photos: images
            # unlike the validated ones void that (a moved damage rate only moves `score`).
            estimate["image_drift"] = [f for f in alarms if f != "score"]
        entry["estimate"] = estimate
        if estimate is not None and estimate["cost_alarm"]:
            alarms.append(COST_ALARM)
        entry["alarms"] = alarms
        entry["alarm"] = bool(alarms)
        entry["labelled"] = None  # inspectors' figures, filled in by the route when capture is on
        if reference is not None:
            entry["histograms"] = {
                f: {"cuts": h.cuts, "reference": h.fractions, "live": mon.fractions(h.cuts, w.column(f))}
                for f, h in reference.features.items()
                if w.rows
            }
        out.append(entry)
    return out


def _estimate(
    version: str, station: str, w: Window, decision: DecisionSpec, cost_margin: float, estimates: Estimates
) -> dict[str, Any] | None:
    """Expected precision, recall, false-alarm rate, cost per parcel and damage rate of the
    window's judged images (a retake gave no verdict), each with its 95% interval, and the
    cost alarm; None before `MIN_IMAGES` judged images."""
    cached = estimates.get((version, station))
    if cached is not None and cached[0] == w.images:
        e = cached[1]
    else:
        judged = [s for s, retake in zip(w.column("score"), w.retakes, strict=True) if not retake]
        e = quality.of_decisions(judged, decision) if len(judged) >= mon.MIN_IMAGES else None
        estimates[(version, station)] = (w.images, e)
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


def _expected_retake_rate(reference: MonitoringSpec | None) -> float | None:
    bounds = reference.domain if reference is not None else None
    if bounds is None or not bounds.test_images:
        return None
    return (bounds.test_retakes or 0) / bounds.test_images


def _gauges(loaded: Loaded, windows: list[tuple[str, Window]], cost_margin: float, estimates: Estimates) -> Gauges:
    """`drift_psi` {station, feature}; `estimated_<figure>` {station, bound: expected, low,
    high}; `estimated_cost_alarm` {station}."""
    out: Gauges = {"drift_psi": []}
    for entry in _report(loaded, windows, cost_margin, estimates):
        station = str(entry["station"])
        drift = entry["drift"]
        assert isinstance(drift, dict)
        out["drift_psi"].extend(((station, feature), float(value)) for feature, value in drift.items())
        e: dict[str, Any] | None = entry["estimate"]  # type: ignore[assignment]
        if e is None:
            continue
        for figure, value in e["figures"].items():
            rows = out.setdefault(f"estimated_{figure}", [])
            if value is not None:
                rows.append(((station, "expected"), value))
            if e["intervals"][figure] is not None:
                low, high = e["intervals"][figure]
                rows.extend((((station, "low"), low), ((station, "high"), high)))
        out.setdefault("estimated_cost_alarm", []).append(((station,), 1.0 if e["cost_alarm"] else 0.0))
    return {family: rows for family, rows in out.items() if rows}
