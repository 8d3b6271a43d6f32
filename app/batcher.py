"""Micro-batching across clients, with a bounded queue.

Each request pins the model that was active when it arrived; a batch only ever holds
images pinned to one model. So every image of a response is served by the same bundle,
and requests in flight during a swap finish on the old model.

Forward passes run one at a time on a dedicated thread (torch parallelises inside an
op); the event loop only moves futures around.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from model_store.predictor import Predictor


class Overloaded(Exception):
    """The queue is full; the client should retry later."""


@dataclass
class _Work:
    predictor: Predictor
    inputs: list[torch.Tensor]
    future: asyncio.Future[list[float]]
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(
        self,
        max_batch: int,
        max_wait_s: float,
        queue_bound: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_bound = queue_bound
        self._on_batch = on_batch or (lambda size, seconds: None)
        self._pending: deque[_Work] = deque()
        self._queued_images = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._task: asyncio.Task[None] | None = None

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for work in self._pending:
            if not work.future.done():
                work.future.set_exception(Overloaded("service is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, predictor: Predictor, inputs: list[torch.Tensor]) -> list[float]:
        """Probabilities for preprocessed inputs, in order, all from `predictor`."""
        if self._queued_images + len(inputs) > self.queue_bound:
            raise Overloaded(f"{self._queued_images} images already queued (bound {self.queue_bound})")
        work = _Work(predictor, inputs, asyncio.get_running_loop().create_future())
        self._pending.append(work)
        self._queued_images += len(inputs)
        self._wakeup.set()
        return await work.future

    def _take_batch(self) -> list[_Work]:
        """Whole requests for one model, up to max_batch images (a bigger request goes alone)."""
        first = self._pending.popleft()
        batch, size = [first], len(first.inputs)
        keep: deque[_Work] = deque()
        while self._pending:
            w = self._pending.popleft()
            if w.predictor is first.predictor and size + len(w.inputs) <= self.max_batch:
                batch.append(w)
                size += len(w.inputs)
            else:
                keep.append(w)
        keep.extend(self._pending)
        self._pending = keep
        self._queued_images -= size
        return batch

    def _ready_images(self, predictor: Predictor) -> int:
        return sum(len(w.inputs) for w in self._pending if w.predictor is predictor)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Wait for the batch to fill, but never longer than max_wait after the oldest arrived.
            head = self._pending[0]
            deadline = head.enqueued + self.max_wait_s
            while self._ready_images(head.predictor) < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_batch()
            inputs = [x for w in batch for x in w.inputs]
            start = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self._executor, _forward, batch[0].predictor, inputs)
            except Exception as exc:  # a model error fails this batch's requests, not the service
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(exc)
                continue
            self._on_batch(len(inputs), time.perf_counter() - start)
            offset = 0
            for w in batch:
                n = len(w.inputs)
                if not w.future.done():  # the client may have gone away
                    w.future.set_result(probs[offset : offset + n])
                offset += n


def _forward(predictor: Predictor, inputs: list[torch.Tensor]) -> list[float]:
    return predictor.probabilities(torch.stack(inputs))
