"""The served model: load, prove, swap, and follow the store's active pointer.

A version is served only after: signature and digests verified (once, here, in the front
process), every worker has built and warmed up its model from those verified bytes, and
parity of its reference images has passed on every worker through the serving pipeline.
That parity report is the `ParityProof` the store needs to move its pointer.

Requests pin the version that was served when they arrived (`pin`/`unpin`); a swap only
changes which version new requests pin, so in-flight requests finish on the old one, which
the workers unload once its last request is answered.

A station canary (`Canary` in the store) is followed like the shadow; it answers the
requests of its stations, pinned the same way, so starting, ending or promoting it fails
no request either. After each canary answer the active version scores the same images in
the background, for the comparison `canary_comparisons` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, ParamSpec, TypeVar

from app.serving.pipeline import Overloaded, Pipeline, Scored
from model_store.domain import RETAKE
from model_store.errors import BundleError, CanaryConflict, ModelStoreError, ParityFailed, VersionRevoked
from model_store.manifest import Manifest
from model_store.parity import ParityReport
from model_store.preprocessing import ImageInfo
from model_store.store.base import AuditEntry, Canary, Revocation, Shadow, Store, canary_stations, refuse_revoked

log = logging.getLogger("app.model")
# Anonymous /v1/parity reuses a result this young: parity frames go to the workers ahead of
# station images, so callers must not be able to queue them at will.
PARITY_CACHE_S = 10.0

# Threads for blocking store (and capture store) calls. Not asyncio's default pool: a hung
# store would hold every thread of it, and the pipeline starts and joins worker processes
# there, so a killed worker would not come back until the store did. Four threads keep the
# follow loop and a few management calls going; more calls wait their turn here, each
# bounded by the S3 client's timeouts (model_store.s3client).
STORE_THREADS = 4
STABLE_READS = 3  # tries at reading the store's settings between two equal pointer stamps
# Stations a canary's comparison keeps apart; a fraction canary could otherwise be sent any
# number of made-up station IDs. Beyond it, new stations are answered but not compared.
MAX_CANARY_STATIONS = 1000

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Loaded:
    version: str
    manifest: Manifest
    manifest_sha256: str
    parity: ParityReport
    loaded_at: float

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def threshold(self) -> float:
        return self.manifest.decision.threshold


class NotReady(Exception):
    pass


@dataclass
class ShadowStats:
    """How a shadow version decides compared with the served one, on the same live images."""

    version: str
    against: str  # the served version it is compared with
    fraction: float
    since: float = field(default_factory=time.time)
    images: int = 0
    agree: int = 0
    to_positive: int = 0  # served said negative, shadow positive
    to_negative: int = 0  # served said positive, shadow negative
    retake: int = 0  # one of the two answered retake (outside its validated ranges), the other judged
    abs_diff_sum: float = 0.0
    dropped: int = 0  # sampled requests not scored: the shadow queue was full (station work first)
    failed: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=2048))  # seconds, most recent

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else None

        return {
            "version": self.version,
            "against": self.against,
            "fraction": self.fraction,
            "since": self.since,
            "images": self.images,
            "agreement": self.agree / self.images if self.images else None,
            "flips": {"to_positive": self.to_positive, "to_negative": self.to_negative, "retake": self.retake},
            "mean_abs_probability_diff": self.abs_diff_sum / self.images if self.images else None,
            "latency_ms": {"p50": pct(0.5), "p95": pct(0.95)},
            "dropped": self.dropped,
            "failed": self.failed,
        }


@dataclass
class ShadowRun:
    loaded: Loaded
    stats: ShadowStats


@dataclass
class CanaryStats:
    """At one canary station: the canary's answers against the active version's, which scores
    the same images in the background after each answer."""

    served: int = 0  # images the canary answered here in this run, compared or not
    images: int = 0  # of those, compared with the active version's decisions
    agree: int = 0
    to_positive: int = 0  # the active said negative, the canary positive
    to_negative: int = 0  # the active said positive, the canary negative
    retake: int = 0  # one of the two answered retake, the other judged
    dropped: int = 0  # requests not compared: the background queue was full (station work first)
    failed: int = 0


@dataclass
class CanaryRun:
    loaded: Loaded
    canary: Canary
    against: str  # the active version the stats compare with
    stats: dict[str, CanaryStats] = field(default_factory=dict)  # per station


@dataclass
class FollowStatus:
    """How following the store goes; shown in /readyz and /metrics."""

    healthy: bool = True
    failures: int = 0  # consecutive
    error: str | None = None  # the last error's type and code, never a path or a secret
    since: float | None = None  # when the current run of failures began
    last_success: float | None = None


class ModelHost:
    def __init__(
        self,
        store: Store,
        pipeline: Pipeline,
        *,
        on_swap: Callable[[Loaded, str], None] | None = None,
        on_refusal: Callable[[str], None] | None = None,
        on_follow_error: Callable[[], None] | None = None,
        on_compare: Callable[[Loaded, str, Sequence[tuple[str, bytes, ImageInfo]], Sequence[Scored]], None]
        | None = None,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.current: Loaded | None = None
        self.reason = "starting: loading the active bundle"
        self.follow_status = FollowStatus()
        self._swap_lock = asyncio.Lock()
        self._on_swap = on_swap or (lambda loaded, how: None)
        self._on_refusal = on_refusal or (lambda code: None)
        self._on_follow_error = on_follow_error or (lambda: None)
        self._refused: dict[str, ModelStoreError] = {}  # so following does not retry a bad bundle forever
        # (active version, station, images, its scores) after each canary comparison.
        self._on_compare = on_compare or (lambda loaded, station, images, scores: None)
        self.shadow: ShadowRun | None = None
        self.canary: CanaryRun | None = None
        self._stamp: str | None = None  # the store's pointer stamp when it was last read
        self._parity: dict[str, tuple[float, ParityReport]] = {}  # version -> (monotonic time, report)
        self._parity_runs: dict[str, asyncio.Future[ParityReport]] = {}
        self.parity_runs = 0  # runs of the served version's parity for /v1/parity (cache misses)
        self._store_threads = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="store")

    async def store_call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` on the store's own threads (see `STORE_THREADS`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store_threads, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Stop taking store calls; a call still waiting on a hung store is abandoned, not awaited."""
        self._store_threads.shutdown(wait=False, cancel_futures=True)

    @property
    def refused(self) -> dict[str, str]:
        """Versions the store pointed at that this replica refused to serve: version -> error code."""
        return {v: exc.code for v, exc in self._refused.items()}

    def require(self) -> Loaded:
        loaded = self.current
        if loaded is None:
            raise NotReady(self.reason)
        return loaded

    def pin(self, station: str | None = None) -> Loaded:
        """The version that serves `station` (the canary's stations: the canary; any other,
        and requests naming none: the active one), kept loaded until `unpin` (no await in
        between: no swap race)."""
        loaded = self.require()
        run = self.canary
        if station is not None and run is not None and run.canary.serves(station):
            loaded = run.loaded
        self.pipeline.pin(loaded.version)
        return loaded

    @contextlib.contextmanager
    def pinned(self, station: str | None = None) -> Iterator[Loaded]:
        """The version that serves one request (see `pin`), kept loaded until the block ends:
        every route that serves a request pins this way. `NotReady` (503) when nothing is
        served yet."""
        loaded = self.pin(station)
        try:
            yield loaded
        finally:
            self.unpin(loaded)

    def unpin(self, loaded: Loaded) -> None:
        self.pipeline.release(loaded.version)

    async def served_parity(self, loaded: Loaded) -> tuple[ParityReport, float]:
        """Parity of the served (pinned) version through the workers now, and its age in
        seconds: one run at a time per version, its result reused for `PARITY_CACHE_S`."""
        version = loaded.version
        cached = self._parity.get(version)
        if cached is not None and time.monotonic() - cached[0] < PARITY_CACHE_S:
            return cached[1], time.monotonic() - cached[0]
        run = self._parity_runs.get(version)
        if run is None:
            self.parity_runs += 1
            run = self._parity_runs[version] = asyncio.ensure_future(self.pipeline.parity(version))

            def done(f: asyncio.Future[ParityReport]) -> None:
                self._parity_runs.pop(version, None)
                if not f.cancelled() and f.exception() is None:
                    self._parity = {version: (time.monotonic(), f.result())}  # only the newest version

            run.add_done_callback(done)
        return await asyncio.shield(run), 0.0  # a caller that leaves does not cancel the others' run

    # --- loading and proving -----------------------------------------------------------

    async def prepare(self, version: str) -> Loaded:
        """Verify, load into every worker, and run parity; the caller must `unpin` it.

        Returns the result whether or not parity passed; `load` is the strict form.
        """
        started = time.perf_counter()
        try:
            bundle = await self.store_call(self.store.load, version)  # verification, once
            await self.pipeline.load(bundle)
        except ModelStoreError as exc:
            self._on_refusal(exc.code)
            raise
        try:
            report = await self.pipeline.parity(version)
        except BaseException:
            self.pipeline.release(version)
            raise
        log.info(
            "loaded %s in %.2fs on %d worker(s); parity %s (max abs diff %.3g)",
            version,
            time.perf_counter() - started,
            self.pipeline.workers,
            "passed" if report.passed else "FAILED",
            report.max_abs_diff,
        )
        return Loaded(version, bundle.manifest, bundle.manifest_sha256, report, time.time())

    async def load(self, version: str) -> Loaded:
        """`prepare`, refusing (and unloading) a version that fails parity."""
        loaded = await self.prepare(version)
        if not loaded.parity.passed:
            self.unpin(loaded)
            self._on_refusal("parity_failed")
            loaded.parity.require_pass()  # raises ParityFailed with the summary
        return loaded

    async def check(self, version: str) -> ParityReport:
        """Parity of a stored version through the serving pipeline, without serving it."""
        loaded = await self.prepare(version)
        self.unpin(loaded)
        return loaded.parity

    def _swap(self, loaded: Loaded, how: str) -> None:
        previous = self.current
        self.current = loaded
        self.reason = ""
        self._refused.pop(loaded.version, None)
        if previous is not None:
            self.unpin(previous)  # unloaded once its last in-flight request is answered
        if self.shadow is not None:  # compare against what is served now, from zero
            s = self.shadow.stats
            self.shadow.stats = ShadowStats(s.version, loaded.version, s.fraction)
        if self.canary is not None:  # likewise
            self.canary = CanaryRun(self.canary.loaded, self.canary.canary, loaded.version)
        self._on_swap(loaded, how)
        log.info("serving %s (was %s) after %s", loaded.version, previous.version if previous else "none", how)

    # --- moving the pointer ------------------------------------------------------------

    async def activate(self, version: str, *, actor: str, reason: str) -> tuple[AuditEntry, Loaded]:
        async with self._swap_lock:
            await self.store_call(self.store.refuse_revoked, version, "activate it")  # before any parity
            loaded = await self.load(version)  # nothing changes unless this passes on every worker
            try:
                proof = loaded.parity.require_pass()
                entry = await self.store_call(self.store.activate, version, actor=actor, reason=reason, proof=proof)
            except BaseException:
                self.unpin(loaded)
                raise
            self._swap(loaded, "activate")
            return entry, loaded

    async def rollback(self, *, actor: str, reason: str) -> tuple[AuditEntry, Loaded]:
        async with self._swap_lock:
            target = await self.store_call(self.store.rollback_candidate)
            loaded = await self.load(target)
            try:
                proof = loaded.parity.require_pass()
                entry = await self.store_call(self.store.rollback, actor=actor, reason=reason, proof=proof)
            except BaseException:
                self.unpin(loaded)
                raise
            self._swap(loaded, "rollback")
            return entry, loaded

    # --- following the store -----------------------------------------------------------

    async def sync_with_store(self) -> None:
        """Serve the store's active version if it changed (another replica or the CLI moved it).

        Store errors propagate (the follow loop counts and backs off); a bundle that fails
        verification or parity is refused, recorded, and the current version keeps serving.
        """
        async with self._swap_lock:
            # One cheap request (a hash of state.json, an S3 ETag) unless the pointer moved.
            stamp: str | None = await self.store_call(self.store.pointer_stamp)
            if stamp == self._stamp:
                return
            # The pointer, shadow, canary and revocations are separate reads: one commit landing
            # between them (a promotion: active v2, no canary) would be seen half (active v1, no
            # canary: the canary's stations on the old version). Read until the stamp holds.
            for _ in range(STABLE_READS):
                wanted = await self.store_call(self.store.active_version)
                shadow = await self.store_call(self.store.shadow)
                canary = await self.store_call(self.store.canary)
                revoked = await self.store_call(self.store.revoked)
                after = await self.store_call(self.store.pointer_stamp)
                if after == stamp:
                    break
                stamp = after
            else:
                stamp = None  # still moving: act on the last reads, and read again next time
            self._stamp = stamp
            # A refused canary stays refused while it is the canary (its bundle cannot change).
            keep = {wanted, canary.version if canary else None}
            self._refused = {v: e for v, e in self._refused.items() if v in keep}
            if shadow is not None and shadow.version in revoked:
                self._refuse(shadow.version, "shadow", revoked)
                shadow = None
            if canary is not None and canary.version in revoked:
                self._refuse(canary.version, "serve as the canary", revoked)
                canary = None
            if wanted is not None and wanted in revoked:
                # Only a store written by a tool that predates revocation (or by hand) points
                # at a revoked version: keep serving what we have, and say so.
                self._refuse(wanted, "serve", revoked)
                if self.current is None:
                    self.reason = f"active version {wanted} refused (version_revoked)"
                await self._follow_settings(shadow, canary)
                return
            if wanted is None:
                if self.current is None:
                    self.reason = "no active version in the store"
                await self._follow_settings(shadow, canary)
                return
            if (self.current is not None and self.current.version == wanted) or wanted in self._refused:
                await self._follow_settings(shadow, canary)
                return
            try:
                loaded = await self.load(wanted)
            except (BundleError, ParityFailed) as exc:  # the bundle itself: refused until the pointer moves
                self._refused[wanted] = exc
                if self.current is None:
                    self.reason = f"active version {wanted} refused ({exc.code})"
                log.error("refusing to serve %s: %s", wanted, exc)
                return
            except BaseException:
                self._stamp = None  # a store or worker failure: read the pointer again next time
                raise
            self._swap(loaded, "store pointer change")
            await self._follow_settings(shadow, canary)

    async def _follow_settings(self, shadow: Shadow | None, canary: Canary | None) -> None:
        try:
            await self._follow_shadow(shadow)
            await self._follow_canary(canary)
        except BaseException:
            self._stamp = None  # a store or worker failure: follow these settings again next time
            raise

    def _refuse(self, version: str, doing: str, revoked: dict[str, Revocation]) -> None:
        """Record that `version` is revoked and will not be used (once per pointer change)."""
        if version in self._refused:
            return
        try:
            refuse_revoked(revoked, version, doing)
        except VersionRevoked as exc:
            self._refused[version] = exc
            self._on_refusal(exc.code)
            log.error("refusing to %s %s: %s", doing, version, exc)

    # --- shadow --------------------------------------------------------------------------

    async def set_shadow(self, version: str | None, *, fraction: float, actor: str, reason: str) -> AuditEntry:
        """Verify and prove `version` here first, then record it in the store (every replica follows)."""
        async with self._swap_lock:
            loaded = await self.load(version) if version is not None else None
            try:
                entry = await self.store_call(
                    self.store.set_shadow, version, fraction=fraction, actor=actor, reason=reason
                )
            except BaseException:
                if loaded is not None:
                    self.unpin(loaded)
                raise
            self._set_shadow_run(loaded, fraction)
            return entry

    async def _follow_shadow(self, wanted: Shadow | None) -> None:
        current = self.shadow
        if wanted is None:
            self._set_shadow_run(None, 0.0)
        elif current is not None and current.loaded.version == wanted.version:
            current.stats.fraction = wanted.fraction
        elif wanted.version not in self._refused:
            try:
                loaded = await self.load(wanted.version)
            except (BundleError, ParityFailed) as exc:
                self._refused[wanted.version] = exc
                log.error("refusing to shadow %s: %s", wanted.version, exc)
                return
            self._set_shadow_run(loaded, wanted.fraction)

    def _set_shadow_run(self, loaded: Loaded | None, fraction: float) -> None:
        previous = self.shadow
        if previous is not None and (loaded is None or previous.loaded is not loaded):
            self.unpin(previous.loaded)
        served = self.current.version if self.current else "none"
        self.shadow = ShadowRun(loaded, ShadowStats(loaded.version, served, fraction)) if loaded else None
        log.info(
            "shadow: %s (was %s)", loaded.version if loaded else "none", previous.loaded.version if previous else "none"
        )

    def shadow_job(
        self, served: Loaded, images: Sequence[tuple[str, bytes, ImageInfo]], scores: Sequence[Scored]
    ) -> Callable[[], Awaitable[None]] | None:
        """For a sampled request: what to run after its response is sent (None otherwise).

        The shadow is pinned now, so switching it off meanwhile cannot unload it mid-job; its
        images wait behind every station image, one at a time, and are dropped when its
        queue is full: a station request is delayed by at most one shadow image's compute.
        """
        run = self.shadow
        if run is None or run.stats.against != served.version or random.random() >= run.stats.fraction:
            return None
        self.pipeline.pin(run.loaded.version)

        async def job() -> None:
            stats, decide = run.stats, served.manifest.decision
            started = time.perf_counter()
            try:
                shadow_scores = await self.pipeline.predict(run.loaded.version, images, shadow=True)
            except Overloaded:
                stats.dropped += 1
                return
            except Exception:  # a bad image or a worker restart: not the shadow's verdict
                stats.failed += 1
                return
            finally:
                self.pipeline.release(run.loaded.version)
            stats.latencies.append(time.perf_counter() - started)
            for mine, theirs in zip(scores, shadow_scores, strict=True):
                stats.images += 1
                stats.abs_diff_sum += abs(theirs.probability - mine.probability)
                if theirs.decision == mine.decision:
                    stats.agree += 1
                elif RETAKE in (theirs.decision, mine.decision):
                    stats.retake += 1
                elif theirs.decision == decide.positive_label:
                    stats.to_positive += 1
                else:
                    stats.to_negative += 1

        return job

    # --- canary ------------------------------------------------------------------------

    async def set_canary(
        self, version: str, *, stations: Sequence[str] = (), fraction: float = 0.0, actor: str, reason: str
    ) -> AuditEntry:
        """Start (or change) a canary: verify and prove `version` here first, then record it
        in the store with that proof (every replica follows, proving it too)."""
        canary_stations(stations, fraction)  # what the store would refuse, before any parity
        async with self._swap_lock:
            if self.current is not None and self.current.version == version:
                raise CanaryConflict(
                    f"version {version} is the active version already: a canary must be another version"
                )
            await self.store_call(self.store.refuse_revoked, version, "make it the canary")
            loaded = await self.load(version)
            try:
                proof = loaded.parity.require_pass()
                entry = await self.store_call(
                    self.store.set_canary,
                    version,
                    stations=tuple(stations),
                    fraction=fraction,
                    actor=actor,
                    reason=reason,
                    proof=proof,
                )
                canary = await self.store_call(self.store.canary)
            except BaseException:
                self.unpin(loaded)
                raise
            if canary is not None and canary.seq == entry.seq:
                self._set_canary_run(loaded, canary)
            else:  # another writer changed it meanwhile: the follow loop serves what the store says
                self.unpin(loaded)
            return entry

    async def end_canary(
        self, *, actor: str, reason: str, expect_seq: int | None = None, evidence: dict[str, Any] | None = None
    ) -> AuditEntry:
        """End the canary in the store; its stations return to the active version here at once."""
        async with self._swap_lock:
            entry = await self.store_call(
                self.store.end_canary, actor=actor, reason=reason, expect_seq=expect_seq, evidence=evidence
            )
            self._set_canary_run(None, None)
            return entry

    async def promote_canary(
        self, *, actor: str, reason: str, expect_seq: int | None = None, evidence: dict[str, Any] | None = None
    ) -> tuple[AuditEntry, Loaded]:
        """Make the canary the active version: proven here like an activation, then the store,
        then this replica serves it to every station (no await in between: no request fails)."""
        async with self._swap_lock:
            canary = await self.store_call(self.store.canary)
            if canary is None:
                raise CanaryConflict("there is no canary")
            loaded = await self.load(canary.version)
            try:
                proof = loaded.parity.require_pass()
                entry = await self.store_call(
                    self.store.promote_canary,
                    actor=actor,
                    reason=reason,
                    proof=proof,
                    # The canary just read: if it changes before the store writes, refused.
                    expect_seq=canary.seq if expect_seq is None else expect_seq,
                    evidence=evidence,
                )
            except BaseException:
                self.unpin(loaded)
                raise
            self._swap(loaded, "promote")
            self._set_canary_run(None, None)
            return entry, loaded

    async def _follow_canary(self, wanted: Canary | None) -> None:
        current = self.canary
        if wanted is None or (self.current is not None and wanted.version == self.current.version):
            self._set_canary_run(None, None)
        elif current is not None and current.loaded.version == wanted.version:
            if current.canary != wanted:  # other stations: a new run, compared from zero
                self.canary = CanaryRun(current.loaded, wanted, current.against)
        elif wanted.version in self._refused:
            self._set_canary_run(None, None)  # its stations keep the active version
        else:
            try:
                loaded = await self.load(wanted.version)
            except (BundleError, ParityFailed) as exc:
                self._refused[wanted.version] = exc
                self._set_canary_run(None, None)
                log.error(
                    "refusing to serve %s as the canary: %s; its stations keep the active version", wanted.version, exc
                )
                return
            self._set_canary_run(loaded, wanted)

    def _set_canary_run(self, loaded: Loaded | None, canary: Canary | None) -> None:
        previous = self.canary
        if previous is not None and (loaded is None or previous.loaded is not loaded):
            self.unpin(previous.loaded)  # unloaded once the requests pinned to it are answered
        against = self.current.version if self.current else "none"
        self.canary = CanaryRun(loaded, canary, against) if loaded is not None and canary is not None else None
        if (previous.canary if previous else None) != canary:
            log.info(
                "canary: %s (was %s)",
                canary.version if canary else "none",
                previous.canary.version if previous else "none",
            )

    def canary_comparisons(self) -> list[dict[str, Any]]:
        """Per canary station: how the canary decided against the active version on the same images."""
        run = self.canary
        if run is None:
            return []
        return [
            {"version": run.loaded.version, "against": run.against, "seq": run.canary.seq, "station": station}
            | asdict(stats)
            for station, stats in sorted(run.stats.items())
        ]

    def canary_job(
        self, served: Loaded, station: str, images: Sequence[tuple[str, bytes, ImageInfo]], scores: Sequence[Scored]
    ) -> Callable[[], Awaitable[None]] | None:
        """For a request the canary answered: the active version's scoring of the same images,
        to run after the response is sent, at shadow priority (dropped when that queue is
        full). None for any other request."""
        run, active = self.canary, self.current
        if run is None or active is None or served.version != run.loaded.version or run.against != active.version:
            return None
        stats = run.stats.get(station)
        if stats is None:
            if len(run.stats) >= MAX_CANARY_STATIONS:
                return None
            stats = run.stats[station] = CanaryStats()
        stats.served += len(images)
        self.pipeline.pin(active.version)  # a swap meanwhile cannot unload it mid-job

        async def job() -> None:
            try:
                theirs = await self.pipeline.predict(active.version, images, shadow=True)
            except Overloaded:
                stats.dropped += 1
                return
            except Exception:  # a bad image or a worker restart: not the canary's verdict
                stats.failed += 1
                return
            finally:
                self.pipeline.release(active.version)
            positive = active.manifest.decision.positive_label
            for mine, active_score in zip(scores, theirs, strict=True):
                stats.images += 1
                if mine.decision == active_score.decision:
                    stats.agree += 1
                elif RETAKE in (mine.decision, active_score.decision):
                    stats.retake += 1
                elif mine.decision == positive:
                    stats.to_positive += 1
                else:
                    stats.to_negative += 1
            try:
                self._on_compare(active, station, images, theirs)
            except Exception:  # monitoring's trouble: the comparison above stands
                log.exception("recording a canary comparison failed")

        return job

    async def follow(self, interval_s: float) -> None:
        """Poll the store forever; any error is logged, counted, reported, and retried with backoff."""
        delay = 0.0  # the first sync (startup) happens at once
        while True:
            await asyncio.sleep(delay)
            try:
                await self.sync_with_store()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status = self.follow_status
                code = getattr(exc, "code", None) or type(exc).__name__
                if status.healthy:
                    status.since = time.time()
                status.healthy, status.failures, status.error = False, status.failures + 1, code
                if self.current is None:
                    self.reason = f"store unreadable ({code})"
                self._on_follow_error()
                log.error("following the store failed (%d in a row): %s: %s", status.failures, type(exc).__name__, exc)
                # Back off to at most a minute, so a broken store is not hammered.
                delay = min(max(interval_s, 0.5) * 2**status.failures, max(60.0, interval_s))
                continue
            self.follow_status = FollowStatus(last_success=time.time())
            if interval_s <= 0:
                return  # following is off: the startup sync was all
            delay = interval_s
