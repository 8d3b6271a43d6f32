"""The inference worker processes, seen from the front: start, talk, watch, replace.

`WorkerPool` owns `n` processes (`app.serving.worker`), one socketpair each. It writes one
frame at a time to a worker and hands the reply to that frame's future; what to send next
is the pipeline's business (`on_idle`).

- **A deadline per frame.** A batch (or a parity run) not answered within `batch_timeout_s`,
  a load within `LOAD_TIMEOUT_S`, means a stuck worker (a pathological image, a stopped
  process): it is killed, its frame fails with `WorkerFailed` (503), and it is started
  again. Idle workers are pinged every `PING_INTERVAL_S` under the same deadline, so a
  stopped one is found before a request is given to it.
- **Crash recovery.** A worker that dies fails only its in-flight frame and its queued
  controls, is started again (with growing pauses if it keeps dying at once), and the
  pipeline gives it every loaded version before it takes work (`on_spawn`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import socket
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any

from app.serving import protocol, worker
from app.settings import BATCH_TIMEOUT_S
from model_store.errors import ModelStoreError
from model_store.preprocessing import DecodeLimits

log = logging.getLogger("app.serving.workers")
SOCKET_BUFFER = 4 * 1024 * 1024  # bytes; the kernel caps it at net.core.wmem_max / rmem_max
LOAD_TIMEOUT_S = 300.0  # building and warming up a model
PING_INTERVAL_S = 5.0  # an idle worker is asked to answer at least this often

Reply = tuple[protocol.Header, list[bytes]]


class WorkerFailed(ModelStoreError):
    """An inference worker could not do what it was asked (or died doing it)."""

    code = "worker_failed"


@dataclass(eq=False)
class _Control:
    header: protocol.Header
    blobs: tuple[bytes, ...]
    future: asyncio.Future[Reply]


@dataclass(eq=False)
class Worker:
    index: int
    process: BaseProcess | None = None
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    listener: asyncio.Task[None] | None = None  # reads this worker's replies, one per frame sent
    waiting: asyncio.Future[Reply] | None = None
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


class WorkerPool:
    def __init__(
        self,
        n: int,
        *,
        device: str,
        threads: int,
        limits: DecodeLimits,
        max_batch: int,
        batch_timeout_s: float = BATCH_TIMEOUT_S,
        on_idle: Callable[[], None],
        on_spawn: Callable[[Worker], None],
    ) -> None:
        self.workers = [Worker(i) for i in range(n)]
        self.device, self.threads, self.limits, self.max_batch = device, threads, limits, max_batch
        self.batch_timeout_s = batch_timeout_s
        self.stuck = 0  # workers killed by the per-frame deadline
        self.closing = False
        self._on_idle, self._on_spawn = on_idle, on_spawn
        # Starting and joining worker processes: never asyncio's default pool, which slow store
        # calls may fill (a dead worker must be replaced whatever the store is doing).
        self._processes = ThreadPoolExecutor(2, thread_name_prefix="worker-processes")
        self._pinger: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(w) for w in self.workers))
        self._pinger = asyncio.get_running_loop().create_task(self._ping_idle(), name="ping-workers")

    async def close(self) -> None:
        self.closing = True
        if self._pinger is not None:
            self._pinger.cancel()
        stops = [self.control(w, {"op": "stop"}) for w in self.workers if w.alive]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*stops, return_exceptions=True), timeout=5)
        loop = asyncio.get_running_loop()
        for w in self.workers:
            if w.writer is not None:
                w.writer.close()
            if w.process is not None:
                await loop.run_in_executor(self._processes, w.process.join, 5)
                if w.process.is_alive():
                    w.process.kill()
        for w in self.workers:
            if w.listener is not None:
                w.listener.cancel()
        self._processes.shutdown(wait=False)

    async def _spawn(self, w: Worker) -> None:
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
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._processes, proc.start)
        back.close()
        w.reader, w.writer = await asyncio.open_unix_connection(sock=front)
        w.process, w.alive, w.busy, w.started_at = proc, True, False, time.monotonic()
        w.replied_at = time.perf_counter()
        w.listener = loop.create_task(self._listen(w), name=f"worker-{w.index}-replies")
        self._on_spawn(w)  # a new worker holds nothing yet: it gets every version before images

    # --- state -------------------------------------------------------------------------

    def idle(self) -> list[Worker]:
        return [w for w in self.workers if w.alive and not w.busy]

    def responsive(self) -> int:
        """Workers alive and not past the deadline of what they are doing (readiness)."""
        now = time.perf_counter()
        return sum(w.alive and not (w.busy and now - w.sent_at > self.batch_timeout_s) for w in self.workers)

    def pids(self) -> list[int | None]:
        return [w.process.pid if w.process is not None and w.alive else None for w in self.workers]

    def busy_seconds(self) -> list[float]:
        return [w.busy_seconds for w in self.workers]

    def restarts(self) -> int:
        return sum(w.restarts for w in self.workers)

    # --- frames ------------------------------------------------------------------------

    def control(self, w: Worker, header: protocol.Header, blobs: tuple[bytes, ...] = ()) -> asyncio.Future[Reply]:
        """Queue a control frame (load, unload, parity, ping, stop); it goes before images."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        if not w.alive:
            future.set_exception(WorkerFailed(f"worker {w.index} is not running"))
            return future
        future.add_done_callback(_retrieve)  # fire-and-forget controls (unload) must not warn
        w.control.append(_Control(header, blobs, future))
        self._on_idle()
        return future

    def send_control(self, w: Worker) -> bool:
        """Send `w`'s next queued control frame, if it has one."""
        if not w.control:
            return False
        c = w.control.popleft()
        self.send(w, c.header, c.blobs, c.future)
        return True

    def send(self, w: Worker, header: protocol.Header, blobs: tuple[bytes, ...], future: asyncio.Future[Reply]) -> None:
        """Write a frame now (no task, no await: the socket buffer takes a whole batch) and
        let the worker's listener hand its reply to `future`, or the deadline fail it."""
        assert w.writer is not None
        w.busy, w.waiting, w.sent_at = True, future, time.perf_counter()
        timeout = LOAD_TIMEOUT_S if header.get("op") == "load" else self.batch_timeout_s
        w.deadline = asyncio.get_running_loop().call_later(timeout, self._overdue, w, future, timeout)
        try:
            w.writer.writelines(protocol.encode(header, blobs))
        except (OSError, RuntimeError) as exc:  # the transport is already closing: the listener restarts it
            w.waiting = None
            future.set_exception(WorkerFailed(f"inference worker {w.index} is gone ({exc!r})"))

    def _overdue(self, w: Worker, future: asyncio.Future[Reply], timeout: float) -> None:
        """The frame's deadline passed: the worker is stuck. Fail the frame, kill the worker
        (SIGKILL ends a stopped process too); its listener sees EOF and starts a new one."""
        w.deadline = None
        if w.waiting is not future or w.process is None:
            return
        w.waiting = None
        self.stuck += 1
        log.error(
            "inference worker %d (pid %s) did not answer within %gs; replacing it", w.index, w.process.pid, timeout
        )
        if not future.done():
            future.set_exception(
                WorkerFailed(f"an inference worker did not finish within {timeout:g} s and was replaced")
            )
        w.process.kill()

    async def _ping_idle(self) -> None:
        """Ask idle workers to answer (under the frame deadline), so a stopped one is replaced."""
        while not self.closing:
            await asyncio.sleep(1.0)
            now = time.perf_counter()
            for w in self.workers:
                if w.alive and not w.busy and not w.control and now - w.replied_at > PING_INTERVAL_S:
                    self.control(w, {"op": "ping"})

    def _disarm(self, w: Worker) -> asyncio.Future[Reply] | None:
        future, w.waiting = w.waiting, None
        if w.deadline is not None:
            w.deadline.cancel()
            w.deadline = None
        return future

    async def _listen(self, w: Worker) -> None:
        """Replies of one worker, in order; on EOF its in-flight frame fails and it is restarted."""
        assert w.reader is not None
        try:
            while True:
                reply = await protocol.read_frame(w.reader)
                future = self._disarm(w)
                w.replied_at = time.perf_counter()
                w.busy_seconds += w.replied_at - w.sent_at
                w.busy = False
                if future is not None and not future.done():
                    future.set_result(reply)
                self._on_idle()
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            future = self._disarm(w)
            if future is not None and not future.done():
                future.set_exception(WorkerFailed(f"inference worker {w.index} exited unexpectedly ({exc!r})"))
            await self._restart(w)

    async def _restart(self, w: Worker) -> None:
        w.alive, w.busy = False, False
        pending, w.control = w.control, deque()
        for c in pending:
            if not c.future.done():
                c.future.set_exception(WorkerFailed(f"inference worker {w.index} exited unexpectedly"))
        if w.writer is not None:
            w.writer.close()
        if w.process is not None:
            await asyncio.get_running_loop().run_in_executor(self._processes, w.process.join, 1)
        if self.closing:
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
        if not self.closing:
            await self._spawn(w)
            self._on_idle()


def _retrieve(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()
