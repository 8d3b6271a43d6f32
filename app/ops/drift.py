"""Drift per station: windows of live features compared with the bundle's reference, and
the quality of the served decisions estimated from their probabilities (no labels needed:
`model_store.estimate`).

A request's station comes from the edge (`app.edge.stations`); requests that name none
count as `unassigned`. At most `max_stations` stations get windows of their
own; further ones share `_other`, so a client inventing IDs cannot grow memory.

Windows (`model_store.fleet`): per version and station the scores, per station the image
features whatever the version (a swap keeps them: a failing camera stays in alarm). The
report itself is `fleet.report`, on this replica's windows merged with the other
replicas' summaries when the fleet view is on (`app.ops.summaries`).

Recording is a few list appends per image on the event loop; PSI and the estimates are
computed only when someone asks (`GET /v1/monitoring`, a Prometheus scrape), in a thread,
from a copy of the windows taken on the loop; for scrapes (anonymous), at most once per
`GAUGES_CACHE_S` however many scrapers ask. An estimate (a few milliseconds per station)
is kept until its window changes, so idle stations cost nothing after the first time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.ops.model_host import Loaded
from app.serving.pipeline import Scored
from model_store import fleet
from model_store import monitoring as mon
from model_store.fleet import COST_ALARM, OTHER, UNASSIGNED, Key, Window
from model_store.preprocessing import ImageInfo

__all__ = ["COST_ALARM", "GAUGES_CACHE_S", "OTHER", "UNASSIGNED", "Monitor", "Window"]

GAUGES_CACHE_S = 5.0  # Prometheus scrapes every 15-60 s; four scrapers must not cost four computations
Gauges = dict[str, list[tuple[tuple[str, ...], float]]]  # metric family -> (label values, value)


@dataclass
class Monitor:
    window: int = 500  # images per station and version
    max_stations: int = 256
    cost_margin: float = 0.5  # the cost alarm's margin above the bundle's expected cost (APP_COST_ALARM_MARGIN)
    # (version, station): scores; (None, station): image features (model_store.fleet)
    windows: dict[Key, Window] = field(default_factory=dict)
    stations: set[str] = field(default_factory=set)
    _estimates: fleet.Estimates = field(default_factory=dict)  # written by the report threads, one key at a time
    _gauges: tuple[float, str, Gauges] | None = None  # (monotonic time, version, gauges)
    _gauges_run: asyncio.Future[Gauges] | None = None

    def _admit(self, station: str) -> str:
        if station not in self.stations:
            if len(self.stations) >= self.max_stations:
                station = OTHER
            self.stations.add(station)
        return station

    def _window(self, key: Key) -> Window:
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = Window.bounded(self.window, image=key[0] is None)
        return w

    def record(
        self,
        loaded: Loaded,
        station: str,
        images: Sequence[tuple[str, bytes, ImageInfo]],
        scores: Sequence[Scored],
        *,
        served: bool = True,
    ) -> None:
        """Record `loaded`'s scores of `images` for `station`. `served=False`: scored in the
        background by another version (a canary): only that version's scores are recorded,
        not the station's image features again."""
        if self.window <= 0:
            return
        station = self._admit(station)
        w = self._window((loaded.version, station))
        camera = self._window((None, station)) if served else None
        for (_, _, info), s in zip(images, scores, strict=True):
            if s.stats is None:
                continue
            w.scores.append(s.probability)
            w.retakes.append(s.retake is not None)
            w.images += 1
            if camera is not None:
                f = mon.features(s.stats, info.width, info.height, s.probability)
                for name in fleet.IMAGE_FEATURES:
                    camera.features[name].append(f[name])
                camera.images += 1

    def forget(self, keep: set[str]) -> None:
        """Drop the score windows of versions no longer served or compared; the stations'
        image features stay (the cameras did not change with the model)."""
        self.windows = {k: w for k, w in self.windows.items() if k[0] is None or k[0] in keep}
        self._estimates = {k: e for k, e in self._estimates.items() if k[0] in keep}

    def seed(self, windows: Mapping[Key, Window]) -> None:
        """Put windows this replica had before a restart (its last summary) before the ones
        recorded since."""
        if self.window <= 0:
            return
        for (version, station), older in windows.items():
            self._window((version, self._admit(station))).prepend(older)

    def snapshot(self) -> dict[Key, Window]:
        """Copies of the windows (C-speed list copies, on the loop), for a thread to read."""
        return {k: w.copy() for k, w in self.windows.items()}

    async def report(self, loaded: Loaded, others: Mapping[Key, Window] | None = None) -> list[dict[str, Any]]:
        """Per station of the served version (`fleet.report`): on this replica's windows, and
        `others` (the rest of the fleet's, merged) beside them."""
        mine = self.snapshot()

        def run() -> list[dict[str, Any]]:
            windows = fleet.merge_windows(mine, others) if others else mine
            return fleet.report(loaded.manifest, loaded.version, windows, self.cost_margin, estimates=self._estimates)

        return await asyncio.to_thread(run)

    async def refresh_gauges(self, loaded: Loaded | None) -> None:
        """Recompute the scrape's gauges (PSI, estimates) if older than `GAUGES_CACHE_S`: one
        computation at a time, in a thread; concurrent scrapes wait for the same one. This
        replica's windows only: Prometheus scrapes every replica."""
        if loaded is None:
            self._gauges = None
            return
        cached = self._gauges
        if cached is not None and cached[1] == loaded.version and time.monotonic() - cached[0] < GAUGES_CACHE_S:
            return
        run = self._gauges_run
        if run is None:
            run = self._gauges_run = asyncio.ensure_future(
                asyncio.to_thread(_gauges, loaded, self.snapshot(), self.cost_margin, self._estimates)
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


def _gauges(loaded: Loaded, windows: Mapping[Key, Window], cost_margin: float, estimates: fleet.Estimates) -> Gauges:
    """`drift_psi` {station, feature}; `estimated_<figure>` {station, bound: expected, low,
    high}; `estimated_cost_alarm` {station}."""
    out: Gauges = {"drift_psi": []}
    for entry in fleet.report(loaded.manifest, loaded.version, windows, cost_margin, estimates=estimates):
        station = str(entry["station"])
        drift = entry["drift"]
        assert isinstance(drift, dict)
        out["drift_psi"].extend(((station, feature), float(value)) for feature, value in drift.items())
        e: dict[str, Any] | None = entry["estimate"]
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
