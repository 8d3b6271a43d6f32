"""The one serving pipeline: admit → queue → batch → worker (decode + forward) → results.

The predict route, `/v1/parity`, activation and shadow scoring all go through a
`Pipeline`. It lives in the front process (the one running the HTTP server) and owns
`workers` inference processes (`app.serving.worker`), one per core by default, each holding every
loaded model version.

- **Admission, in one place.** A request is refused with `Overloaded` (503) when the
  images already queued or in flight, or the pixels they will decode, would pass their
  bounds; a request that could never fit is `RequestTooLarge` (413). Pixels come from the
  image headers, read before queueing, so a few huge PNGs count for what they cost.
- **No fixed batch wait.** An idle worker takes work the moment it arrives; while all
  workers are busy, images pile up, and the next free worker takes up to `max_batch` of
  them at once. Batches hold one model version only, so every image of a response comes
  from the version the response names.
- **Priorities.** Control work (loading a version, parity runs) goes to a worker before
  queued images; shadow images (a candidate scored on live traffic) only when no station
  image is waiting, and are dropped first under load.
- **Crash recovery.** A worker that dies fails only its in-flight batch, is started
  again, and gets every loaded version back before it takes work.
- **A deadline per frame.** A batch (or a parity run) not answered within `batch_timeout_s`,
  a load within `LOAD_TIMEOUT_S`, means a stuck worker (a pathological image, a stopped
  process): it is killed, its frame answered with `WorkerFailed` (503), and it is started
  again. Idle workers are pinged every `PING_INTERVAL_S` under the same deadline, so a
  stopped one is found before a request is given to it.
- **Header checks off the event loop.** `inspect` runs Pillow's header parsing (bounded by
  `model_store.structure`) in a small thread pool, so the front keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from app.serving import protocol, worker
from app.settings import BATCH_TIMEOUT_S
from model_store import parity
from model_store.bundle import Bundle
from model_store.errors import BundleError, ImageError, ModelStoreError
from model_store.manifest import Manifest
from model_store.monitoring import ImageStats
from model_store.parity import ParityReport
from model_store.preprocessing import DecodeLimits, ImageInfo, inspect

E = TypeVar("E", bound=ModelStoreError)
log = logging.getLogger("app.serving.pipeline")
SOCKET_BUFFER = 4 * 1024 * 1024  # bytes; the kernel caps it at net.core.wmem_max / rmem_max
SHADOW_QUEUE = 32  # shadow images waiting at most; beyond, a sampled request is not shadowed
LOAD_TIMEOUT_S = 300.0  # building and warming up a model
PING_INTERVAL_S = 5.0  # an idle worker is asked to answer at least this often
INSPECT_THREADS = 2  # header checks of images being admitted (bounded work each)


class Overloaded(Exception):
    """Queued work is at its bound; the client should retry shortly."""


class RequestTooLarge(Exception):
    """This request alone is more work than the service ever queues."""


class WorkerFailed(ModelStoreError):
    """An inference worker could not do what it was asked (or died doing it)."""

    code = "worker_failed"


@dataclass(frozen=True)
class Scored:
    """One image's outcome: a probability, its decision, and the drift features of its crop."""

    probability: float
    decision: str
    stats: ImageStats | None = None


@dataclass(eq=False)
class _Request:
    version: str
    results: list[tuple[float, ImageStats | None] | None]
    future: asyncio.Future[list[tuple[float, ImageStats | None]]]
    remaining: int
    shadow: bool = False

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


@dataclass(eq=False)
class _Control:
    header: protocol.Header
    blobs: tuple[bytes, ...]
    future: asyncio.Future[tuple[protocol.Header, list[bytes]]]


@dataclass(eq=False)
class _Worker:
    index: int
    process: BaseProcess | None = None
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    listener: asyncio.Task[None] | None = None  # reads this worker's replies, one per frame sent
    waiting: asyncio.Future[tuple[protocol.Header, list[bytes]]] | None = None
    deadline: asyncio.TimerHandle | None = None  # the watchdog of the frame in flight
    sent_at: float = 0.0
    replied_at: float = 0.0
    busy: bool = False
    alive: bool = False
    control: deque[_Control] = field(default_factory=deque)
    busy_seconds: float = 0.0
    restarts: int = 0
    started_at: float = 0.0
    backoff: float = 0.0


BatchObserver = Callable[[int, float, float], None]  # images, decode seconds, forward seconds


_CONTEXT: ForkServerContext | None = None


def _context() -> ForkServerContext:
    # forkserver: the server process imports torch and the model code once; each worker is
    # a fork of it (milliseconds), never of the front with its event loop and threads.
    global _CONTEXT
    if _CONTEXT is None:
        ctx = multiprocessing.get_context("forkserver")
        assert isinstance(ctx, ForkServerContext)
        ctx.set_forkserver_preload(["app.serving.worker"])
        _CONTEXT = ctx
    return _CONTEXT


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
    ) -> None:
        self.device = device
        self.threads = threads_per_worker
        self.max_batch = max_batch
        self.queue_bound = queue_bound
        self.max_pending_pixels = max_pending_pixels
        self.limits = limits or DecodeLimits()
        self.image_stats = image_stats  # drift features per image (off when monitoring is off)
        self.batch_timeout_s = batch_timeout_s
        self.stuck_workers = 0  # workers killed by the per-frame deadline
        self._inspector = ThreadPoolExecutor(INSPECT_THREADS, thread_name_prefix="inspect")
        # Starting and joining worker processes: never asyncio's default pool, which slow store
        # calls may fill (a dead worker must be replaced whatever the store is doing).
        self._processes = ThreadPoolExecutor(2, thread_name_prefix="worker-processes")
        self._pinger: asyncio.Task[None] | None = None
        self._on_batch = on_batch or (lambda n, d, f: None)
        self._workers = [_Worker(i) for i in range(workers)]
        self._models: dict[str, _Model] = {}
        self._pending: deque[_Item] = deque()
        self._shadow: deque[_Item] = deque()
        self.queued_images = 0  # admitted station images not yet answered (queued or in a batch)
        self.queued_pixels = 0
        self._closing = False

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def workers(self) -> int:
        return len(self._workers)

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(w) for w in self._workers))
        self._pinger = asyncio.get_running_loop().create_task(self._ping_idle(), name="ping-workers")

    async def _ping_idle(self) -> None:
        """Ask idle workers to answer (under the frame deadline), so a stopped one is replaced."""
        while not self._closing:
            await asyncio.sleep(1.0)
            now = time.perf_counter()
            for w in self._workers:
                if w.alive and not w.busy and not w.control and now - w.replied_at > PING_INTERVAL_S:
                    self._send_control(w, {"op": "ping"})

    def responsive_workers(self) -> int:
        """Workers alive and not past the deadline of what they are doing (readiness)."""
        now = time.perf_counter()
        return sum(w.alive and not (w.busy and now - w.sent_at > self.batch_timeout_s) for w in self._workers)

    async def _spawn(self, w: _Worker) -> None:
        front, back = socket.socketpair()
        for end in (front, back):
            # Room for a whole batch of camera photos in flight: one write, one wake-up,
            # instead of the default ~200 KB buffer splitting every frame into pieces.
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        proc = _context().Process(
            target=worker.serve,
            args=(back, self.threads, self.device, self.limits, self.max_batch),
            name=f"inference-worker-{w.index}",
            daemon=True,
        )
        await asyncio.get_running_loop().run_in_executor(self._processes, proc.start)
        back.close()
        w.reader, w.writer = await asyncio.open_unix_connection(sock=front)
        w.process, w.alive, w.busy, w.started_at = proc, True, False, time.monotonic()
        w.replied_at = time.perf_counter()
        w.listener = asyncio.get_running_loop().create_task(self._listen(w), name=f"worker-{w.index}-replies")
        # A new worker holds nothing yet: give it every version before it takes images.
        for model in list(self._models.values()):
            model.ready.discard(w.index)
            self._send_control(w, *model.frame).add_done_callback(self._loaded_callback(model, w))

    def _loaded_callback(self, model: _Model, w: _Worker) -> Callable[[asyncio.Future[Any]], None]:
        def done(f: asyncio.Future[Any]) -> None:
            if not f.cancelled() and f.exception() is None and f.result()[0].get("ok"):
                model.ready.add(w.index)
                self._dispatch()

        return done

    async def close(self) -> None:
        self._closing = True
        if self._pinger is not None:
            self._pinger.cancel()
        self._inspector.shutdown(wait=False, cancel_futures=True)
        for items in (self._pending, self._shadow):
            for item in items:
                self._fail(item.request, Overloaded("the service is shutting down"))
            items.clear()
        stops = []
        for w in self._workers:
            if w.alive:
                stops.append(self._send_control(w, {"op": "stop"}))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*stops, return_exceptions=True), timeout=5)
        for w in self._workers:
            if w.writer is not None:
                w.writer.close()
            if w.process is not None:
                await asyncio.get_running_loop().run_in_executor(self._processes, w.process.join, 5)
                if w.process.is_alive():
                    w.process.kill()
        for w in self._workers:
            if w.listener is not None:
                w.listener.cancel()
        self._processes.shutdown(wait=False)

    def worker_pids(self) -> list[int | None]:
        return [w.process.pid if w.process is not None and w.alive else None for w in self._workers]

    def worker_busy_seconds(self) -> list[float]:
        return [w.busy_seconds for w in self._workers]

    def worker_restarts(self) -> int:
        return sum(w.restarts for w in self._workers)

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
        replies = await asyncio.gather(
            *(self._send_control(w, header, model.frame[1]) for w in self._workers), return_exceptions=True
        )
        failures, bundle_error = [], None
        for w, r in zip(self._workers, replies, strict=True):
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
            for w in self._workers:
                if w.alive:
                    self._send_control(w, {"op": "unload", "version": version})

    def manifest(self, version: str) -> Manifest:
        return self._models[version].manifest

    async def parity(self, version: str) -> ParityReport:
        """The version's reference images through every worker, each as one batch (as at export)."""
        model = self._models[version]
        refs = model.frame[1][2:]
        replies = await asyncio.gather(
            *(self._send_control(w, {"op": "predict", "version": version}, refs) for w in self._workers)
        )
        reports = []
        for w, (header, _) in zip(self._workers, replies, strict=True):
            if not header.get("ok") or header["errors"]:
                raise WorkerFailed(f"worker {w.index} could not run {version}'s parity images: {header}")
            reports.append(parity.report(model.manifest, model.manifest_sha256, header["probs"]))
        return parity.combine(reports)

    # --- predictions -------------------------------------------------------------------

    def refuse_if_full(self) -> None:
        """Shed a request before its body is read (cheap) when the queue is already at a bound."""
        if self.queued_images >= self.queue_bound or self.queued_pixels >= self.max_pending_pixels:
            raise Overloaded(
                f"{self.queued_images} images ({self.queued_pixels / 1e6:.0f} megapixels) already queued "
                f"(bounds {self.queue_bound} images, {self.max_pending_pixels / 1e6:.0f} megapixels)"
            )

    async def inspect(self, version: str, images: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes, ImageInfo]]:
        """Header checks of a request's images with the version's own preprocessing, before
        queueing: bounded work per image (`model_store.structure`), in the inspect threads,
        never on the event loop. The first refusal names its image."""
        resize = self._models[version].manifest.preprocessing.resize

        def check() -> list[tuple[str, bytes, ImageInfo]]:
            checked = []
            for name, data in images:
                try:
                    checked.append((name, data, inspect(data, self.limits, resize=resize)))
                except ImageError as exc:
                    raise type(exc)(f"{name}: {exc}") from None
            return checked

        return await asyncio.get_running_loop().run_in_executor(self._inspector, check)

    async def predict(
        self, version: str, images: Sequence[tuple[str, bytes, ImageInfo]], *, shadow: bool = False
    ) -> list[Scored]:
        """Scores for `images` (name, bytes, header info) from `version`, in order.

        Raises `Overloaded`, `RequestTooLarge`, or the first `ImageError` (its message
        names the image) when an image fails to decode in a worker.
        """
        if not images:
            return []
        pixels = sum(info.decode_work for _, _, info in images)
        n = len(images)
        if shadow and len(self._shadow) + n > SHADOW_QUEUE:
            raise Overloaded(f"{len(self._shadow)} shadow images already waiting")
        if not shadow:
            if pixels > self.max_pending_pixels:
                raise RequestTooLarge(
                    f"{n} image(s) of {pixels / 1e6:.0f} megapixels in all; the service queues at most "
                    f"{self.max_pending_pixels / 1e6:.0f}"
                )
            if self.queued_images + n > self.queue_bound or self.queued_pixels + pixels > self.max_pending_pixels:
                raise Overloaded(
                    f"{self.queued_images} images ({self.queued_pixels / 1e6:.0f} megapixels) already queued "
                    f"(bounds {self.queue_bound} images, {self.max_pending_pixels / 1e6:.0f} megapixels)"
                )
            self.queued_images += n
            self.queued_pixels += pixels
        model = self._models[version]
        model.users += 1
        loop = asyncio.get_running_loop()
        request = _Request(version, [None] * n, loop.create_future(), n, shadow)
        queue = self._shadow if shadow else self._pending
        queue.extend(_Item(request, i, data, info.decode_work) for i, (_, data, info) in enumerate(images))
        self._dispatch()
        try:
            probs = await request.future
        except ImageError as exc:
            index = int(exc.args[1]) if len(exc.args) > 1 else 0
            raise type(exc)(f"{images[index][0]}: {exc.args[0]}") from None
        finally:
            if not request.done:  # the client went away: drop what is still queued
                request.future.cancel()
            self.release(version)
        decide = model.manifest.decision.decide
        return [Scored(p, decide(p), stats) for p, stats in probs]

    def _fail(self, request: _Request, exc: BaseException) -> None:
        if not request.done:
            request.future.set_exception(exc)

    def _finish_item(self, item: _Item) -> None:
        if not item.request.shadow:
            self.queued_images -= 1
            self.queued_pixels -= item.pixels

    # --- dispatch ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Give every idle worker its next piece of work: control first, then images.

        What is queued is shared among the idle workers (8 images and 2 idle workers: 4
        each), so a multipart request does not wait on one core while another sits idle.
        """
        idle = [w for w in self._workers if w.alive and not w.busy]
        for i, w in enumerate(idle):
            if w.control:
                self._start(w, w.control.popleft())
                continue
            if self._closing:
                continue
            for queue, most in ((self._pending, self.max_batch), (self._shadow, 1)):
                # Shadow images go one at a time: a station image that arrives meanwhile
                # waits for at most one of them.
                share = -(-len(queue) // (len(idle) - i))  # ceil: this worker's part of the queue
                batch = self._take_batch(w, queue, min(most, share))
                if batch:
                    self._start_batch(w, batch)
                    break

    def _take_batch(self, w: _Worker, queue: deque[_Item], limit: int) -> list[_Item]:
        """Up to `limit` queued images of the first live request's version, in order."""
        while queue and queue[0].request.done:
            self._finish_item(queue.popleft())  # its client left or it already failed
        if not queue:
            return []
        version = queue[0].request.version
        if w.index not in self._models[version].ready:
            return []  # this worker is still loading that version
        batch: list[_Item] = []
        keep: deque[_Item] = deque()
        while queue and len(batch) < limit:
            item = queue.popleft()
            if item.request.done:
                self._finish_item(item)
            elif item.request.version == version:
                batch.append(item)
            else:
                keep.append(item)
        keep.extend(queue)
        queue.clear()
        queue.extend(keep)
        return batch

    def _send_control(
        self, w: _Worker, header: protocol.Header, blobs: tuple[bytes, ...] = ()
    ) -> asyncio.Future[tuple[protocol.Header, list[bytes]]]:
        future: asyncio.Future[tuple[protocol.Header, list[bytes]]] = asyncio.get_running_loop().create_future()
        if not w.alive:
            future.set_exception(WorkerFailed(f"worker {w.index} is not running"))
            return future
        future.add_done_callback(_retrieve)  # fire-and-forget controls (unload) must not warn
        w.control.append(_Control(header, blobs, future))
        self._dispatch()
        return future

    def _start(self, w: _Worker, control: _Control) -> None:
        self._send(w, control.header, control.blobs, control.future)

    def _start_batch(self, w: _Worker, batch: list[_Item]) -> None:
        future: asyncio.Future[tuple[protocol.Header, list[bytes]]] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: self._batch_done(batch, f))
        header = {"op": "predict", "version": batch[0].request.version, "stats": self.image_stats}
        self._send(w, header, tuple(item.data for item in batch), future)

    def _send(
        self,
        w: _Worker,
        header: protocol.Header,
        blobs: tuple[bytes, ...],
        future: asyncio.Future[tuple[protocol.Header, list[bytes]]],
    ) -> None:
        """Write a frame now (no task, no await: the socket buffer takes a whole batch) and
        let the worker's listener hand its reply to `future`."""
        assert w.writer is not None
        w.busy, w.waiting, w.sent_at = True, future, time.perf_counter()
        timeout = LOAD_TIMEOUT_S if header.get("op") == "load" else self.batch_timeout_s
        w.deadline = asyncio.get_running_loop().call_later(timeout, self._overdue, w, future, timeout)
        try:
            w.writer.writelines(protocol.encode(header, blobs))
        except (OSError, RuntimeError) as exc:  # the transport is already closing: the listener restarts it
            w.waiting = None
            future.set_exception(WorkerFailed(f"inference worker {w.index} is gone ({exc!r})"))

    def _overdue(self, w: _Worker, future: asyncio.Future[Any], timeout: float) -> None:
        """The frame's deadline passed: the worker is stuck. Answer the frame, kill the worker
        (SIGKILL ends a stopped process too); its listener sees EOF and starts a new one."""
        w.deadline = None
        if w.waiting is not future or w.process is None:
            return
        w.waiting = None
        self.stuck_workers += 1
        log.error(
            "inference worker %d (pid %s) did not answer within %gs; replacing it", w.index, w.process.pid, timeout
        )
        if not future.done():
            future.set_exception(
                WorkerFailed(f"an inference worker did not finish within {timeout:g} s and was replaced")
            )
        w.process.kill()

    async def _listen(self, w: _Worker) -> None:
        """Replies of one worker, in order; on EOF its in-flight frame fails and it is restarted."""
        assert w.reader is not None
        try:
            while True:
                reply = await protocol.read_frame(w.reader)
                future, w.waiting = w.waiting, None
                if w.deadline is not None:
                    w.deadline.cancel()
                    w.deadline = None
                w.replied_at = time.perf_counter()
                w.busy_seconds += w.replied_at - w.sent_at
                w.busy = False
                if future is not None and not future.done():
                    future.set_result(reply)
                self._dispatch()
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            future, w.waiting = w.waiting, None
            if w.deadline is not None:
                w.deadline.cancel()
                w.deadline = None
            if future is not None and not future.done():
                future.set_exception(WorkerFailed(f"inference worker {w.index} exited unexpectedly ({exc!r})"))
            await self._restart(w)

    async def _restart(self, w: _Worker) -> None:
        w.alive, w.busy = False, False
        pending, w.control = w.control, deque()
        for c in pending:
            if not c.future.done():
                c.future.set_exception(WorkerFailed(f"inference worker {w.index} exited unexpectedly"))
        if w.writer is not None:
            w.writer.close()
        if w.process is not None:
            await asyncio.get_running_loop().run_in_executor(self._processes, w.process.join, 1)
        if self._closing:
            return
        w.restarts += 1
        # A worker that keeps dying at once (a broken install, a poisoned model) is started
        # again with growing pauses, so the front stays responsive and the log readable.
        lived = time.monotonic() - w.started_at
        w.backoff = 0.0 if lived > 60 else min(max(1.0, w.backoff * 2), 30.0)
        log.error(
            "inference worker %d (pid %s) exited after %.1fs; starting it again in %.0fs",
            w.index, w.process and w.process.pid, lived, w.backoff,
        )  # fmt: skip
        await asyncio.sleep(w.backoff)
        if not self._closing:
            await self._spawn(w)
            self._dispatch()

    def _batch_done(self, batch: list[_Item], f: asyncio.Future[tuple[protocol.Header, list[bytes]]]) -> None:
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
        for i, (item, p, s) in enumerate(zip(batch, header["probs"], header["stats"], strict=True)):
            request = item.request
            if request.done:
                continue
            if i in failed:
                code, message = failed[i]
                request.future.set_exception(_image_error(code, message, item.index))
                continue
            request.results[item.index] = (p, ImageStats(*s) if s is not None else None)
            request.remaining -= 1
            if request.remaining == 0:
                request.future.set_result([r for r in request.results if r is not None])


def _retrieve(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()


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
