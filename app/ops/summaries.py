"""This replica's part of the fleet's monitoring (`model_store.fleet`): its drift windows
written to the store every `APP_SUMMARY_INTERVAL_S` (`summaries/<replica>.json`), seeded
from its own last summary when it starts (a restart under the same replica ID loses
nothing), and the other replicas' summaries read back for `GET /v1/monitoring`.

Every store call runs on the model host's store threads, never on the event loop; a failure
is logged and counted (`fleet_summary_writes_total{outcome="failed"}`) and never touches
serving. Until its own last summary has been read, a replica writes none: it would replace
the windows it is about to seed from.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.ops.drift import Monitor
from app.ops.model_host import ModelHost
from model_store import fleet
from model_store.fleet import Key, Skipped, Summary, Window

log = logging.getLogger("app.fleet")

# A replica that has not written for this many intervals (5 minutes at the default 30 s) is
# stale: stopped, or cut off from the store. Its windows leave the merge (it stays listed).
STALE_INTERVALS = 10
LISTED_FOR_S = 86400.0  # summaries not written for a day are not even read (replicas long gone)
READ_CACHE_S = 1.0  # /v1/monitoring calls within this share one read of the store
FINAL_WRITE_S = 5.0  # at shutdown, the last summary gets this long


@dataclass(frozen=True)
class FleetView:
    others: dict[Key, Window]  # the other fresh replicas' windows, merged
    replicas: list[dict[str, Any]]  # this replica first, then every other one with a summary
    skipped: list[dict[str, str]]  # summary objects that could not be used, and why
    fleet: bool  # other replicas' summaries are in the store (and summaries are on)
    error: str | None = None  # the store could not be read: this replica's windows only


@dataclass
class Summaries:
    replica: str
    interval_s: float  # 0: off
    monitor: Monitor
    host: ModelHost
    comparisons: Callable[[], list[dict[str, Any]]]  # written as they are: the canary's comparison figures
    canary: Callable[[], str | None] = lambda: None  # the version being compared, if any
    started_at: float = field(default_factory=time.time)
    written: int = 0
    failed: int = 0
    last_written: float | None = None  # unix time of the last summary written
    seeded: bool = False  # this replica's previous summary, if any, is in its windows
    _read: tuple[float, list[Summary], list[Skipped]] | None = None  # (monotonic time, summaries, skipped)
    _carried: list[dict[str, Any]] = field(default_factory=list)  # comparisons from before a restart
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0 and self.monitor.window > 0

    @property
    def max_age_s(self) -> float:
        return STALE_INTERVALS * self.interval_s

    async def run(self) -> None:
        """Seed, then write every interval, forever (cancelled at shutdown)."""
        while True:
            try:
                if not self.seeded:
                    await self.seed()
                await self.write()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed += 1
                log.error("window summary of %s not %s: %s: %s", self.replica,
                          "written" if self.seeded else "read back", type(exc).__name__, exc)  # fmt: skip
            await asyncio.sleep(self.interval_s)

    async def seed(self) -> None:
        """Put this replica's windows from its last summary (before a restart) into the monitor."""
        raws = await self.host.store_call(self.host.store.summaries, newer_than=time.time() - LISTED_FOR_S)
        mine = [raw for raw in raws if isinstance(raw, dict) and raw.get("replica") == self.replica]
        summaries, skipped = fleet.parse_summaries(mine)
        for s in skipped:
            log.warning("not seeding from the last summary of %s: %s", self.replica, s.reason)
        if summaries:
            previous = fleet.latest(summaries)[0]
            self.monitor.seed(previous.windows)
            self._carried = previous.comparisons  # the canary's, until the run they count for ends
            log.info("seeded %d window(s) from the summary %s wrote at %.0f", len(previous.windows),
                     self.replica, previous.written_at)  # fmt: skip
        self.seeded = True

    async def write(self) -> None:
        """Write this replica's windows now."""
        if not self.seeded:
            return
        windows = self.monitor.snapshot()  # on the loop: recording never races the copy
        current = self.host.current
        served = current.version if current is not None else None
        comparisons, canary, now = carry(self._carried, self.comparisons()), self.canary(), time.time()

        def build_and_write() -> None:
            body = fleet.summary(self.replica, self.started_at, windows, comparisons, served, canary, now=now)
            self.host.store.write_summary(self.replica, body)

        await self.host.store_call(build_and_write)
        self.written += 1
        self.last_written = now

    async def close(self) -> None:
        """The last summary at shutdown, so a restart finds the windows up to now."""
        if not self.enabled or not self.seeded:
            return
        try:
            await asyncio.wait_for(self.write(), FINAL_WRITE_S)
        except Exception as exc:  # a hung or broken store must not hold the shutdown
            self.failed += 1
            log.error("last window summary of %s not written: %s: %s", self.replica, type(exc).__name__, exc)

    async def view(self) -> FleetView:
        """The other replicas' windows (fresh summaries, merged) and every replica's freshness."""
        now = time.time()
        if not self.enabled:
            return FleetView({}, [self._me(now)], [], False)
        try:
            summaries, skipped = await self._summaries()
        except Exception as exc:
            code = getattr(exc, "code", None) or type(exc).__name__
            log.error("reading the fleet's window summaries failed: %s: %s", type(exc).__name__, exc)
            return FleetView({}, [self._me(now)], [], False, f"store unreadable ({code})")
        others = [s for s in summaries if s.replica != self.replica]  # ours: the live windows instead
        merged = await asyncio.to_thread(fleet.merge, others, now=now, max_age_s=self.max_age_s)
        rows = fleet.replicas(others, now=now, max_age_s=self.max_age_s)
        return FleetView(
            merged,
            [self._me(now), *({**r, "this": False} for r in rows)],
            [s.as_dict() for s in skipped],
            bool(others),
        )

    async def _summaries(self) -> tuple[list[Summary], list[Skipped]]:
        async with self._lock:  # concurrent callers share one read
            cached = self._read
            if cached is None or time.monotonic() - cached[0] > READ_CACHE_S:
                raws = await self.host.store_call(self.host.store.summaries, newer_than=time.time() - LISTED_FOR_S)
                summaries, skipped = await asyncio.to_thread(fleet.parse_summaries, raws)
                cached = self._read = (time.monotonic(), summaries, skipped)
            return cached[1], cached[2]

    def _me(self, now: float) -> dict[str, Any]:
        current = self.host.current
        return {
            "replica": self.replica,
            "this": True,
            "written_at": self.last_written,
            "age_s": round(now - self.last_written, 3) if self.last_written is not None else None,
            "stale": False,  # its live windows are shown, whatever it last wrote
            "started_at": self.started_at,
            "served": current.version if current is not None else None,
            "canary": self.canary(),
            "windows": len(self.monitor.windows),
        }


def carry(before: list[dict[str, Any]], live: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The canary comparisons to write: this process's, plus those its last summary held
    before a restart, for the same canary run (version, active version, `seq`) and station.
    Counts of runs that are over are dropped: they are no longer evidence."""
    runs = {(c.get("version"), c.get("against"), c.get("seq")) for c in live}
    out = {(c["version"], c["against"], c["seq"], c["station"]): dict(c) for c in live}
    for c in before:
        key = (c.get("version"), c.get("against"), c.get("seq"), c.get("station"))
        if key[:3] not in runs and live:
            continue
        into = out.setdefault(key, {**c, **{n: 0 for n in fleet.COMPARISON_COUNTS}})
        for n in fleet.COMPARISON_COUNTS:
            value = c.get(n, 0)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                into[n] = into.get(n, 0) + value
    return list(out.values())
