"""Drift per station: windows of live features compared with the bundle's reference.

A request's station comes from the edge (`app.edge.stations`); requests that name none
count as `unassigned`. At most `max_stations` stations get windows of their
own; further ones share `_other`, so a client inventing IDs cannot grow memory.

Recording is a few list appends per image on the event loop; PSI is computed only when
someone asks (`GET /v1/monitoring`, a Prometheus scrape), in a thread, from a copy of the
windows taken on the loop; for scrapes (anonymous), at most once per `GAUGES_CACHE_S`
however many scrapers ask.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.ops.model_host import Loaded
from app.serving.pipeline import Scored
from model_store import monitoring as mon
from model_store.manifest import MonitoringSpec
from model_store.preprocessing import ImageInfo

UNASSIGNED = "unassigned"  # requests that name no station
OTHER = "_other"  # stations beyond `max_stations` share this window
GAUGES_CACHE_S = 5.0  # Prometheus scrapes every 15-60 s; four scrapers must not cost four computations


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
    windows: dict[tuple[str, str], Window] = field(default_factory=dict)  # (version, station)
    stations: set[str] = field(default_factory=set)
    _gauges: tuple[float, str, list[tuple[str, str, float]]] | None = None  # (monotonic time, version, gauges)
    _gauges_run: asyncio.Future[list[tuple[str, str, float]]] | None = None

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

    def _snapshot(self, version: str) -> list[tuple[str, Window]]:
        """Copies of one version's windows (C-speed list copies, on the loop), for a thread to read."""
        return [
            (station, Window(deque(w.rows), deque(w.retakes), w.images))
            for (v, station), w in sorted(self.windows.items())
            if v == version
        ]

    async def report(self, loaded: Loaded) -> list[dict[str, object]]:
        """Per station of the served version: window, decision rate, PSI per feature, alarms."""
        return await asyncio.to_thread(_report, loaded, self._snapshot(loaded.version))

    async def refresh_gauges(self, loaded: Loaded | None) -> None:
        """Recompute the scrape's PSI gauges if older than `GAUGES_CACHE_S`: one computation
        at a time, in a thread; concurrent scrapes wait for the same one."""
        if loaded is None:
            self._gauges = None
            return
        cached = self._gauges
        if cached is not None and cached[1] == loaded.version and time.monotonic() - cached[0] < GAUGES_CACHE_S:
            return
        run = self._gauges_run
        if run is None:
            run = self._gauges_run = asyncio.ensure_future(
                asyncio.to_thread(_gauges, loaded, self._snapshot(loaded.version))
            )

            def done(f: asyncio.Future[list[tuple[str, str, float]]]) -> None:
                self._gauges_run = None
                if not f.cancelled() and f.exception() is None:
                    self._gauges = (time.monotonic(), loaded.version, f.result())

            run.add_done_callback(done)
        await asyncio.shield(run)

    def gauges(self, loaded: Loaded | None) -> list[tuple[str, str, float]]:
        """(station, feature, PSI) for Prometheus, as last computed by `refresh_gauges`."""
        cached = self._gauges
        if loaded is None or cached is None or cached[1] != loaded.version:
            return []
        return cached[2]


def _report(loaded: Loaded, windows: list[tuple[str, Window]]) -> list[dict[str, object]]:
    reference = loaded.manifest.monitoring
    positive = loaded.manifest.decision.positive_label
    out: list[dict[str, object]] = []
    for station, w in windows:
        decisions = [loaded.manifest.decision.decide(s) == positive for s in w.column("score")]
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
        entry["alarms"] = sorted(f for f, v in drift.items() if v > mon.PSI_ALARM)
        entry["alarm"] = bool(entry["alarms"])
        if reference is not None:
            entry["histograms"] = {
                f: {"cuts": h.cuts, "reference": h.fractions, "live": mon.fractions(h.cuts, w.column(f))}
                for f, h in reference.features.items()
                if w.rows
            }
        out.append(entry)
    return out


def _expected_retake_rate(reference: MonitoringSpec | None) -> float | None:
    bounds = reference.domain if reference is not None else None
    if bounds is None or not bounds.test_images:
        return None
    return (bounds.test_retakes or 0) / bounds.test_images


def _gauges(loaded: Loaded, windows: list[tuple[str, Window]]) -> list[tuple[str, str, float]]:
    out: list[tuple[str, str, float]] = []
    for entry in _report(loaded, windows):
        drift = entry["drift"]
        assert isinstance(drift, dict)
        out.extend((str(entry["station"]), feature, float(value)) for feature, value in drift.items())
    return out
