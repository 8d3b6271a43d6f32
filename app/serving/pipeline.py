"""The one serving pipeline: admit → check → queue → batch → worker (decode + forward) → results.

The predict route, `/v1/parity`, activation and shadow scoring all go through a
`Pipeline`. It lives in the front process (the one running the HTTP server), holds the
versions loaded in its `WorkerPool` (`app.serving.workers`, one process per core by
default), and decides what each idle worker does next.

- **Admission, in one place** (`app.serving.admission`): a request is refused with
  `Overloaded` (503) when the images already queued or in flight, or the decode work they
  will cost, would pass their bounds; a request that could never fit is `RequestTooLarge`
  (413). Decode work comes from the image headers, read before queueing.
- **Header checks off the event loop.** `inspect` runs Pillow's header parsing (bounded by
  `model_store.structure`) in a small thread pool, so the front keeps answering meanwhile;
  one camera JPEG (short header, `_cheap_to_check`) costs less than the hop, and is checked at once.
- **No fixed batch wait.** An idle worker takes work the moment it arrives; while all
  workers are busy, images pile up, and the next free worker takes up to `max_batch` of
  them at once. Batches hold one model version only, so every image of a response comes
  from the version the response names.
- **Deadlines.** A request may carry one (monotonic time): when it passes, the request
  fails at once with `DeadlineExceeded` and its images leave the queue, so expired work is
  never decoded or batched, and nobody waits for the queue to drain to hear so.
- **Priorities.** Control work (loading a version, parity runs) goes to a worker before
  queued images; explanations (`explain`: one image's heatmap, many forwards) and shadow
  images (a candidate scored on live traffic) only when no station image is waiting, and
  both are refused first under load. At most `explain_bound` explanations run at once,
  each on one worker (admission counts them apart: `Admission.admit_explain`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from app.serving import protocol
from app.serving.admission import Admission, DeadlineExceeded, Overloaded, RequestTooLarge
from app.serving.workers import Reply, Worker, WorkerFailed, WorkerPool
from app.settings import BATCH_TIMEOUT_S
from model_store import domain, parity
from model_store.bundle import Bundle
from model_store.errors import BundleError, ImageError, ModelStoreError
from model_store.explain import DEFAULT_METHOD, Method, forwards
from model_store.manifest import DomainBounds, Manifest
from model_store.monitoring import ImageStats
from model_store.parity import ParityReport
from model_store.preprocessing import DecodeLimits, ImageInfo, inspect
from model_store.structure import check_structure

__all__ = ["DeadlineExceeded", "Explained", "Overloaded", "Pipeline", "RequestTooLarge", "Scored", "WorkerFailed"]

E = TypeVar("E", bound=ModelStoreError)
log = logging.getLogger("app.serving.pipeline")
SHADOW_QUEUE = 32  # shadow images waiting at most; beyond, a sampled request is not shadowed
# A request is admitted while the queue ahead of it takes at most this share of its budget
# (measured with `python -m benchmarks --deadline-ms 300`: docs/performance.md).
ADMIT_SHARE = 0.7
INSPECT_THREADS = 2  # header checks of images being admitted (bounded work each)
# One JPEG up to this size with at most this much header before its image data (what a
# station's camera sends: ~600 bytes) is checked on the event loop, ~30 us, where the hop to a
# thread and back cost the front more than the check. A longer header goes to the threads:
# Pillow parses it in Python, ~50 ms for a crafted 1 MB one (quantisation tables).
INLINE_INSPECT_BYTES = 1024 * 1024
INLINE_HEADER_BYTES = 16 * 1024

BatchObserver = Callable[[int, float, float], None]  # images, decode seconds, forward seconds


@dataclass(frozen=True)
class Scored:
    """One image's outcome: a probability, its decision (`retake` with the reason when the
    image is outside the validated ranges), the drift features of its crop, and what a
    receipt states beside them: where it was computed and (receipts on) its sha256."""

    probability: float
    decision: str
    stats: ImageStats | None = None
    retake: domain.Retake | None = None
    image_sha256: str | None = None  # hashed by the worker that scored it (`Pipeline(image_digests=True)`)
    batch: tuple[int, int] | None = None  # (images in its forward pass, its row there): its last bits depend on both

    @property
    def reason(self) -> str | None:
        return self.retake.reason if self.retake is not None else None


class _Result(NamedTuple):
    probability: float
    stats: ImageStats | None
    image_sha256: str | None
    batch: tuple[int, int]


@dataclass(frozen=True)
class Explained:
    """One image's served score and where its evidence lies (`model_store.explain`)."""

    probability: float  # what predict answers for this image alone, bit for bit
    decision: str  # predict's: `retake` too when the image is outside the validated ranges
    reason: str | None  # why a retake
    method: str
    width: int  # the image as sent, after its EXIF orientation
    height: int
    seen: tuple[float, float, float, float]  # the model's input in those pixels: left, top, right, bottom
    grid: list[list[float | None]]  # rows over the image; None: cropped away
    overlay_png: bytes


@dataclass(eq=False)
class _Explain:
    version: str
    data: bytes
    method: str
    future: asyncio.Future[Reply]
    dispatched: bool = False
    released: bool = False  # its admission slot was given back


@dataclass(eq=False)
class _Request:
    version: str
    results: list[_Result | None]
    future: asyncio.Future[list[_Result]]
    remaining: int
    shadow: bool = False
    dispatched: bool = False  # some of its images went to a worker
    deadline: float | None = None  # time.monotonic() by which its answer is of use
    # After this it is judged by the batch-time estimate: only one that had to wait behind
    # others (overload). A request a free worker takes at once, an unusual one (huge images
    # among small ones) included, is never refused on an estimate learned from others.
    judge_after: float = 0.0
    queued_at: float = 0.0  # time.monotonic() when it was admitted

    @property
    def done(self) -> bool:
        return self.future.done()


@dataclass(eq=False)
class _Item:
    request: _Request
    index: int
    data: bytes
    pixels: int  # decode work, as admission counts it (`ImageInfo.decode_work`)


@dataclass
class _Model:
    """A version loaded in the workers, and what it takes to load it into a new one."""

    version: str
    manifest: Manifest
    manifest_sha256: str
    frame: tuple[protocol.Header, tuple[bytes, ...]]
    users: int = 0  # requests pinned to it, plus the pin of being served or checked
    ready: set[int] = field(default_factory=set)  # workers that hold it

    @property
    def domain(self) -> DomainBounds | None:
        """The validated ranges behind `retake` (None: a bundle exported without them)."""
        return self.manifest.monitoring.domain if self.manifest.monitoring is not None else None


class Pipeline:
    def __init__(
        self,
        *,
        workers: int,
        device: str = "cpu",
        threads_per_worker: int = 1,
        max_batch: int = 16,
        queue_bound: int = 256,
        max_pending_pixels: int = 512_000_000,
        limits: DecodeLimits | None = None,
        on_batch: BatchObserver | None = None,
        image_stats: bool = True,
        batch_timeout_s: float = BATCH_TIMEOUT_S,
        image_digests: bool = False,
        explain_bound: int = 1,
    ) -> None:
        self.max_batch = max_batch
        self.limits = limits or DecodeLimits()
        self.image_stats = image_stats  # drift features per image (off when monitoring is off)
        self.image_digests = image_digests  # sha256 per image, in the workers (for receipts)
        self.admission = Admission(queue_bound, max_pending_pixels, explain_bound)
        self.pool = WorkerPool(
            workers,
            device=device,
            threads=threads_per_worker,
            limits=self.limits,
            max_batch=max_batch,
            batch_timeout_s=batch_timeout_s,
            on_idle=self._dispatch,
            on_spawn=self._give_versions,
        )
        self._inspector = ThreadPoolExecutor(INSPECT_THREADS, thread_name_prefix="inspect")
        self._on_batch = on_batch or (lambda n, d, f: None)
        self._models: dict[str, _Model] = {}
        self._pending: deque[_Item] = deque()
        self._shadow: deque[_Item] = deque()
        self._explaining: deque[_Explain] = deque()  # admitted explanations not yet given to a worker
        self._image_s = 0.01  # seconds a worker spends per image (updated from every batch)

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def workers(self) -> int:
        return len(self.pool.workers)

    async def start(self) -> None:
        await self.pool.start()

    async def close(self) -> None:
        self.pool.closing = True
        self._inspector.shutdown(wait=False, cancel_futures=True)
        for items in (self._pending, self._shadow):
            for item in items:
                self._fail(item.request, Overloaded("the service is shutting down"))
            items.clear()
        for job in self._explaining:
            if not job.future.done():
                job.future.set_exception(Overloaded("the service is shutting down"))
        await self.pool.close()

    def _give_versions(self, w: Worker) -> None:
        """A new (or restarted) worker gets every loaded version before it takes images."""
        for model in list(self._models.values()):
            model.ready.discard(w.index)
            self.pool.control(w, *model.frame).add_done_callback(self._loaded_callback(model, w))

    def _loaded_callback(self, model: _Model, w: Worker) -> Callable[[asyncio.Future[Any]], None]:
        def done(f: asyncio.Future[Any]) -> None:
            if not f.cancelled() and f.exception() is None and f.result()[0].get("ok"):
                model.ready.add(w.index)
                self._dispatch()

        return done

    # --- versions ----------------------------------------------------------------------

    async def load(self, bundle: Bundle) -> None:
        """Give every worker the (already verified) bundle; each builds and warms up its model."""
        version = bundle.version
        manifest = bundle.manifest
        refs = tuple(bundle.references[r.file] for r in manifest.parity.references)
        header: protocol.Header = {
            "op": "load",
            "version": version,
            "path": str(bundle.path),
            "manifest_sha256": bundle.manifest_sha256,
        }
        model = self._models.get(version)
        if model is not None and model.manifest_sha256 == bundle.manifest_sha256:
            model.users += 1  # already loaded (e.g. checked before it was activated)
            return
        if model is not None:
            raise WorkerFailed(f"{version} is loaded with other content; unload it first")
        model = _Model(
            version, manifest, bundle.manifest_sha256, (header, (bundle.manifest_bytes, bundle.weights, *refs))
        )
        model.users = 1
        self._models[version] = model
        workers = self.pool.workers
        replies = await asyncio.gather(
            *(self.pool.control(w, header, model.frame[1]) for w in workers), return_exceptions=True
        )
        failures, bundle_error = [], None
        for w, r in zip(workers, replies, strict=True):
            if isinstance(r, BaseException):
                failures.append(f"worker {w.index}: {r}")
            elif not r[0].get("ok"):
                failures.append(f"worker {w.index}: {r[0].get('message')}")
                bundle_error = bundle_error or _error_class(r[0].get("code"), BundleError)
            else:
                model.ready.add(w.index)
        if failures:
            self.release(version)
            # The bundle itself (weights that do not fit the architecture, found where they
            # are parsed): refused as what it is, not as a worker failure to retry.
            raise (bundle_error or WorkerFailed)(f"{version} could not be loaded: {'; '.join(failures)}")

    def pin(self, version: str) -> None:
        """Keep `version` loaded until the matching `release` (a request or a served version)."""
        self._models[version].users += 1

    def release(self, version: str) -> None:
        model = self._models.get(version)
        if model is None:
            return
        model.users -= 1
        if model.users <= 0:
            del self._models[version]
            for w in self.pool.workers:
                if w.alive:
                    self.pool.control(w, {"op": "unload", "version": version})

    def manifest(self, version: str) -> Manifest:
        return self._models[version].manifest

    async def parity(self, version: str) -> ParityReport:
        """The version's reference images through every worker, each as one batch (as at export)."""
        model = self._models[version]
        refs = model.frame[1][2:]
        workers = self.pool.workers
        replies = await asyncio.gather(
            *(self.pool.control(w, {"op": "predict", "version": version}, refs) for w in workers)
        )
        reports = []
        for w, (header, _) in zip(workers, replies, strict=True):
            if not header.get("ok") or header["errors"]:
                raise WorkerFailed(f"worker {w.index} could not run {version}'s parity images: {header}")
            reports.append(parity.report(model.manifest, model.manifest_sha256, header["probs"]))
        return parity.combine(reports)

    # --- predictions -------------------------------------------------------------------

    def refuse_if_full(self, deadline: float | None = None) -> None:
        """Shed a request before its body is read (cheap) when the queue is already at a bound,
        or when what is queued ahead of it would take longer than its budget (`deadline`,
        `time.monotonic()`): admitted, it would only be read, checked and dropped at its
        deadline, and under overload that wasted work is what starves the workers."""
        self.admission.refuse_if_full()
        queued = self.admission.images
        if deadline is None or not queued:
            return
        # Workers take the queue in parallel; the smoothed time per image includes the lag.
        # At most `ADMIT_SHARE` of what is left: the rest is for reading, checking, its own
        # batch and the front's lag under load.
        wait = (queued / max(1, self.workers) + 1) * self._image_s
        if wait > ADMIT_SHARE * (deadline - time.monotonic()):
            raise Overloaded(
                f"{queued} images already queued, about {wait * 1000:.0f} ms of work: more than is left "
                "of this request's budget"
            )

    async def inspect(self, version: str, images: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes, ImageInfo]]:
        """Header checks of a request's images with the version's own preprocessing, before
        queueing: bounded work per image (`model_store.structure`), in the inspect threads
        (one camera JPEG, `_cheap_to_check`: at once). The first refusal names its image."""
        resize = self._models[version].manifest.preprocessing.resize

        def check() -> list[tuple[str, bytes, ImageInfo]]:
            checked = []
            for name, data in images:
                try:
                    checked.append((name, data, inspect(data, self.limits, resize=resize)))
                except ImageError as exc:
                    raise _named(exc, name, str(exc)) from None
            return checked

        if len(images) == 1 and _cheap_to_check(images[0][1]):
            return check()
        return await asyncio.get_running_loop().run_in_executor(self._inspector, check)

    async def predict(
        self,
        version: str,
        images: Sequence[tuple[str, bytes, ImageInfo]],
        *,
        shadow: bool = False,
        deadline: float | None = None,
    ) -> list[Scored]:
        """Scores for `images` (name, bytes, header info) from `version`, in order.

        `deadline`: `time.monotonic()` by which the answer is of use; past it the request
        fails at once and its images leave the queue (`DeadlineExceeded`).

        Raises `Overloaded`, `RequestTooLarge`, `WorkerFailed`, `DeadlineExceeded`, or the
        first `ImageError` (its message names the image) when an image fails to decode.
        """
        if not images:
            return []
        work = sum(info.decode_work for _, _, info in images)
        n = len(images)
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise DeadlineExceeded("queue", "its budget ran out before it was queued")
        if shadow and len(self._shadow) + n > SHADOW_QUEUE:
            raise Overloaded(f"{len(self._shadow)} shadow images already waiting")
        if not shadow:
            self.admission.admit(n, work)
        model = self._models[version]
        model.users += 1
        loop = asyncio.get_running_loop()
        request = _Request(version, [None] * n, loop.create_future(), n, shadow, deadline=deadline)
        request.queued_at = time.monotonic()
        request.judge_after = request.queued_at + 0.001
        queue = self._shadow if shadow else self._pending
        queue.extend(_Item(request, i, data, info.decode_work) for i, (_, data, info) in enumerate(images))
        timer = None if left is None else loop.call_later(left, self._expire, request, queue)
        self._dispatch()
        try:
            probs = await request.future
        except ImageError as exc:
            index = int(exc.args[1]) if len(exc.args) > 1 else 0
            raise _named(exc, images[index][0], exc.args[0]) from None
        finally:
            if timer is not None:
                timer.cancel()
            if not request.done:  # the client went away: drop what is still queued
                request.future.cancel()
            self.release(version)
        spec, bounds = model.manifest.decision, model.domain
        out = []
        for r, (_, _, info) in zip(probs, images, strict=True):
            decision, why = domain.verdict(spec, bounds, r.probability, r.stats, info.width, info.height)
            out.append(Scored(r.probability, decision, r.stats, why, r.image_sha256, r.batch))
        return out

    async def explain(
        self,
        version: str,
        image: tuple[str, bytes, ImageInfo],
        *,
        method: Method = DEFAULT_METHOD,
        deadline: float | None = None,
    ) -> Explained:
        """One image (name, bytes, header info) explained by `version` on one worker: its
        served probability and decision, and its heatmap (`model_store.explain`).

        Raises `Overloaded` (explanations at their bound, or the station queue too full to
        take one's cost), `DeadlineExceeded`, `WorkerFailed`, or the image's `ImageError`.
        """
        name, data, info = image
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise DeadlineExceeded("queue", "its budget ran out before it was queued")
        # Decoded twice in the worker: at the served size, and at the overlay's.
        self.admission.admit_explain(forwards(method), 2 * info.decode_work)
        model = self._models[version]
        model.users += 1
        loop = asyncio.get_running_loop()
        job = _Explain(version, data, method, loop.create_future())
        self._explaining.append(job)
        timer = None if left is None else loop.call_later(left, self._expire_explain, job)
        self._dispatch()
        try:
            header, blobs = await job.future
        finally:
            if timer is not None:
                timer.cancel()
            if not job.dispatched:  # expired, shut down or its client left while it waited
                self._explaining.remove(job)
                self._release_explain(job)
            # A dispatched one keeps its slot until its worker answers (`_start_explain`):
            # a client that leaves does not free the worker any sooner.
            self.release(version)
        if not header.get("ok"):
            cls = _error_class(header.get("code"), ImageError)
            if cls is not None:
                raise cls(f"{name}: {header.get('message')}")
            raise WorkerFailed(f"explanation failed: {header.get('message')}")
        p = header["probability"]
        left_, top, right, bottom = header["seen"]
        decision, why = domain.verdict(
            model.manifest.decision, model.domain, p, ImageStats(*header["stats"]), info.width, info.height
        )
        return Explained(
            p,
            decision,
            why.reason if why is not None else None,
            header["method"],
            header["width"],
            header["height"],
            (left_, top, right, bottom),
            header["grid"],
            blobs[0],
        )

    def _expire_explain(self, job: _Explain) -> None:
        if not job.future.done():
            where = "while a worker was explaining it" if job.dispatched else "while it waited for a worker"
            job.future.set_exception(
                DeadlineExceeded("batch" if job.dispatched else "queue", f"its budget ran out {where}")
            )

    def _release_explain(self, job: _Explain) -> None:
        if not job.released:
            job.released = True
            self.admission.explained()

    def _start_explain(self, w: Worker) -> bool:
        """Give `w` the first waiting explanation, if its version is ready there."""
        if not self._explaining:
            return False
        job = self._explaining[0]
        if w.index not in self._models[job.version].ready:
            return False
        self._explaining.popleft()
        job.dispatched = True
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def done(f: asyncio.Future[Reply]) -> None:
            self._release_explain(job)
            if job.future.done():
                return
            exc = None if f.cancelled() else f.exception()
            if f.cancelled():
                job.future.set_exception(WorkerFailed("the explanation was cancelled"))
            elif exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(f.result())

        future.add_done_callback(done)
        self.pool.send(w, {"op": "explain", "version": job.version, "method": job.method}, (job.data,), future)
        return True

    def _expire(self, request: _Request, queue: deque[_Item]) -> None:
        """A request's deadline passed: answer it now, and take its images out of the queue
        (they are never decoded, and stop counting against admission)."""
        if request.done:
            return
        stage = "batch" if request.dispatched else "queue"
        where = "while a worker was scoring it" if request.dispatched else "while it was queued (before decode)"
        request.future.set_exception(DeadlineExceeded(stage, f"its budget ran out {where}"))
        kept = deque(item for item in queue if item.request is not request)
        for item in queue:
            if item.request is request:
                self._finish_item(item)
        queue.clear()
        queue.extend(kept)

    def _fail(self, request: _Request, exc: BaseException) -> None:
        if not request.done:
            request.future.set_exception(exc)

    def _finish_item(self, item: _Item) -> None:
        if not item.request.shadow:
            self.admission.answered(item.pixels)

    # --- dispatch ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Give every idle worker its next piece of work: control first, then images.

        What is queued is shared among the idle workers (8 images and 2 idle workers: 4
        each), so a multipart request does not wait on one core while another sits idle.
        """
        idle = self.pool.idle()
        for i, w in enumerate(idle):
            if self.pool.send_control(w) or self.pool.closing:
                continue
            for queue, most in ((self._pending, self.max_batch), (self._shadow, 1)):
                # Explanations, then shadow images, only when no station image waits; shadow
                # images go one at a time: a station image that arrives meanwhile waits for
                # at most one of them (or one explanation).
                if queue is self._shadow and not self._pending and self._start_explain(w):
                    break
                share = -(-len(queue) // (len(idle) - i))  # ceil: this worker's part of the queue
                batch = self._take_batch(w, queue, min(most, share))
                if batch:
                    self._start_batch(w, batch)
                    break

    def _take_batch(self, w: Worker, queue: deque[_Item], limit: int) -> list[_Item]:
        """Up to `limit` queued images of the first live request's version: oldest first,
        newest first while the service is behind (`_behind`)."""
        while queue and queue[0].request.done:
            self._finish_item(queue.popleft())  # its client left or it already failed
        if not queue:
            return []
        if not _behind(queue[0].request, time.monotonic()):
            return self._take_in_order(w, queue, limit)
        # Behind (overload): the oldest have spent most of their budget waiting and would be
        # answered late if at all, so the newest go first and finish well within theirs;
        # the oldest leave at their deadline (504), which they would have met anyway.
        # Goodput stays at what the workers can do instead of collapsing to late answers.
        queue.reverse()
        try:
            return self._take_in_order(w, queue, limit)
        finally:
            queue.reverse()

    def _take_in_order(self, w: Worker, queue: deque[_Item], limit: int) -> list[_Item]:
        """Up to `limit` images from the front of `queue` of its first request's version."""
        while queue and queue[0].request.done:
            self._finish_item(queue.popleft())
        if not queue:
            return []
        version = queue[0].request.version
        if w.index not in self._models[version].ready:
            return []  # this worker is still loading that version
        batch: list[_Item] = []
        keep: deque[_Item] = deque()
        now = time.monotonic()
        while queue and len(batch) < limit:
            item = queue.popleft()
            request = item.request
            if request.done:
                self._finish_item(item)
            elif request.version == version:
                # Never start what cannot finish in time: under overload the oldest images
                # are the closest to their deadline, and starting them would spend the
                # workers on answers nobody can use (goodput would collapse).
                if (
                    request.deadline is not None
                    and now >= request.judge_after
                    and now + self._batch_s(len(batch) + 1) > request.deadline
                ):
                    self._fail(
                        request, DeadlineExceeded("queue", "its budget would run out before a worker could finish it")
                    )
                    self._finish_item(item)
                    continue
                request.dispatched = True
                batch.append(item)
            else:
                keep.append(item)
        keep.extend(queue)
        queue.clear()
        queue.extend(keep)
        return batch

    def _batch_s(self, images: int) -> float:
        """How long a batch of `images` takes from dispatch to answer, with a margin (the
        front's own lag under load, a slower image): what a deadline must leave room for."""
        return 1.5 * self._image_s * images + 0.01

    def _start_batch(self, w: Worker, batch: list[_Item]) -> None:
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        sent = time.monotonic()

        def done(f: asyncio.Future[Reply]) -> None:
            if not f.cancelled() and f.exception() is None:  # dispatch to answer, per image, smoothed
                self._image_s += 0.2 * ((time.monotonic() - sent) / len(batch) - self._image_s)
            self._batch_done(batch, f)

        future.add_done_callback(done)
        version = batch[0].request.version
        header = {
            "op": "predict",
            "version": version,
            # The features also feed the retake check of a bundle that has one, monitoring or not.
            "stats": self.image_stats or self._models[version].domain is not None,
            "digests": self.image_digests,
        }
        self.pool.send(w, header, tuple(item.data for item in batch), future)

    def _batch_done(self, batch: list[_Item], f: asyncio.Future[Reply]) -> None:
        for item in batch:
            self._finish_item(item)
        if f.cancelled():
            return
        exc = f.exception()
        if exc is not None:
            for item in batch:
                self._fail(item.request, exc)
            return
        header, _ = f.result()
        if not header.get("ok"):
            failure = WorkerFailed(f"inference failed: {header.get('message')}")
            for item in batch:
                self._fail(item.request, failure)
            return
        self._on_batch(header["batch"], header["decode_s"], header["forward_s"])

        failed = {row[0]: (row[1], row[2]) for row in header["errors"]}
        # The worker stacks the images that decoded, in order: an image's row in the forward
        # pass is the count of decoded ones before it.
        rows = [i - sum(1 for f in failed if f < i) for i in range(len(batch))]
        digests = header.get("digests") or [None] * len(batch)
        for i, (item, p, s) in enumerate(zip(batch, header["probs"], header["stats"], strict=True)):
            request = item.request
            if request.done:
                continue
            if i in failed:
                code, message = failed[i]
                request.future.set_exception(_image_error(code, message, item.index))
                continue
            stats = ImageStats(*s) if s is not None else None
            request.results[item.index] = _Result(p, stats, digests[i], (header["batch"], rows[i]))
            request.remaining -= 1
            if request.remaining == 0:
                request.future.set_result([r for r in request.results if r is not None])


def _behind(oldest: _Request, now: float) -> bool:
    """The oldest queued request has waited more than half its budget: work arrives faster
    than the workers answer it (a queue that drains waits far less)."""
    deadline = oldest.deadline
    return deadline is not None and now - oldest.queued_at > (deadline - oldest.queued_at) / 2


def _cheap_to_check(data: bytes) -> bool:
    """A JPEG whose check costs less than a thread hop: small, with a short header."""
    if len(data) > INLINE_INSPECT_BYTES or not data.startswith(b"\xff\xd8"):
        return False
    try:
        return check_structure(data).header_bytes <= INLINE_HEADER_BYTES
    except ImageError:
        return False  # refused in a thread, with its message


def _named(exc: ImageError, name: str, message: str) -> ImageError:
    """An image refusal, its message prefixed with the image's name (the one place it is)."""
    return type(exc)(f"{name}: {message}")


def _image_error(code: str, message: str, index: int) -> ImageError:
    """The worker's decode refusal as the same ImageError subclass, carrying the image index."""
    return (_error_class(code, ImageError) or ImageError)(message, index)


def _error_class(code: object, base: type[E]) -> type[E] | None:
    """The subclass of `base` (itself included) whose `code` a worker replied with."""
    todo: list[type[E]] = [base]
    while todo:
        c = todo.pop()
        if c.code == code:
            return c
        todo.extend(c.__subclasses__())
    return None
