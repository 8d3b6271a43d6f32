"""The active model inside the service: load, prove, swap, follow the store.

A model is served only after: signature and digests verified, weights loaded strictly,
`eval()`, a warm-up pass, and parity of its reference images through the same path as
`/v1/predict` (decode pool → micro-batcher). Swaps replace one reference; requests that
pinned the old model finish on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from app.batcher import MicroBatcher
from model_store.errors import ImageError, ModelStoreError, NothingToRollBack
from model_store.parity import ParityReport
from model_store.predictor import Predictor
from model_store.preprocessing import DecodeLimits
from model_store.store.base import AuditEntry, Store

log = logging.getLogger("app.model")


@dataclass(frozen=True)
class Loaded:
    predictor: Predictor
    parity: ParityReport
    manifest_sha256: str
    loaded_at: float

    @property
    def version(self) -> str:
        return self.predictor.bundle.version

    @property
    def name(self) -> str:
        return self.predictor.manifest.name


class NotReady(Exception):
    pass


class ModelHost:
    def __init__(
        self,
        store: Store,
        batcher: MicroBatcher,
        *,
        device: str,
        limits: DecodeLimits,
        decode_threads: int,
        on_swap: Callable[[Loaded, str], None] | None = None,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.batcher = batcher
        self.device = device
        self.limits = limits
        self.current: Loaded | None = None
        self.reason = "starting: loading the active bundle"
        self._decode = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode")
        self._swap_lock = asyncio.Lock()
        self._on_swap = on_swap or (lambda loaded, how: None)
        self._on_refusal = on_refusal or (lambda code: None)
        self._failed: dict[str, str] = {}  # version -> why it was refused, so following does not retry forever

    def close(self) -> None:
        self._decode.shutdown(wait=False, cancel_futures=True)

    @property
    def refused(self) -> dict[str, str]:
        """Versions the store pointed at that this replica refused to serve, and why."""
        return dict(self._failed)

    def require(self) -> Loaded:
        loaded = self.current
        if loaded is None:
            raise NotReady(self.reason)
        return loaded

    # --- the serving path ----------------------------------------------------------------

    async def preprocess(self, predictor: Predictor, images: Sequence[tuple[str, bytes]]) -> list[torch.Tensor]:
        """Decode and transform off the event loop; an ImageError names the bad image."""
        loop = asyncio.get_running_loop()
        pre = predictor.preprocessor
        futures = [loop.run_in_executor(self._decode, pre, data) for _, data in images]
        results = await asyncio.gather(*futures, return_exceptions=True)
        tensors: list[torch.Tensor] = []
        for (name, _), r in zip(images, results, strict=True):
            if isinstance(r, ImageError):
                raise type(r)(f"{name}: {r}")
            if isinstance(r, BaseException):
                raise r
            tensors.append(r)
        return tensors

    async def probabilities(self, predictor: Predictor, images: Sequence[tuple[str, bytes]]) -> list[float]:
        return await self.batcher.submit(predictor, await self.preprocess(predictor, images))

    async def parity(self, predictor: Predictor) -> ParityReport:
        refs = predictor.manifest.parity.references
        images = [(r.file, predictor.bundle.references[r.file]) for r in refs]
        return predictor.parity_report(await self.probabilities(predictor, images))

    # --- loading and swapping ------------------------------------------------------------

    async def load(self, version: str) -> Loaded:
        """Verify, build, warm up, and run parity; raises ParityFailed if it does not pass."""
        try:
            return await self._load(version)
        except ModelStoreError as exc:
            self._on_refusal(exc.code)
            raise

    async def _load(self, version: str) -> Loaded:
        started = time.perf_counter()

        def build() -> Predictor:
            bundle = self.store.load(version)
            predictor = Predictor(bundle, device=self.device, limits=self.limits)
            predictor.warm_up()
            return predictor

        predictor = await asyncio.to_thread(build)
        report = await self.parity(predictor)
        log.info(
            "loaded %s in %.2fs; parity %s",
            version,
            time.perf_counter() - started,
            "passed" if report.passed else "FAILED",
        )
        report.require_pass()
        return Loaded(predictor, report, predictor.bundle.manifest_sha256, time.time())

    def _swap(self, loaded: Loaded, how: str) -> None:
        previous = self.current
        self.current = loaded
        self.reason = ""
        self._failed.pop(loaded.version, None)
        self._on_swap(loaded, how)
        log.info("serving %s (was %s) after %s", loaded.version, previous.version if previous else "none", how)

    async def activate(self, version: str, *, actor: str, reason: str) -> tuple[AuditEntry, Loaded]:
        async with self._swap_lock:
            loaded = await self.load(version)  # nothing changes unless this passes
            proof = loaded.parity.require_pass()
            entry = await asyncio.to_thread(self.store.activate, version, actor=actor, reason=reason, proof=proof)
            self._swap(loaded, "activate")
            return entry, loaded

    async def rollback(self, *, actor: str, reason: str) -> tuple[AuditEntry, Loaded]:
        async with self._swap_lock:
            target = await asyncio.to_thread(self.store.previous_version)
            if target is None:
                raise NothingToRollBack("no earlier active version to roll back to")
            loaded = await self.load(target)
            proof = loaded.parity.require_pass()
            entry = await asyncio.to_thread(self.store.rollback, actor=actor, reason=reason, proof=proof)
            self._swap(loaded, "rollback")
            return entry, loaded

    async def sync_with_store(self) -> None:
        """Serve the store's active version if it changed (another replica or the CLI moved it)."""
        async with self._swap_lock:
            try:
                wanted = await asyncio.to_thread(self.store.active_version)
            except ModelStoreError as exc:
                self.reason = self.reason or f"store unreadable: {exc}"
                log.error("cannot read the store: %s", exc)
                return
            if wanted is None:
                if self.current is None:
                    self.reason = "no active version in the store"
                return
            if self.current is not None and self.current.version == wanted:
                return
            if wanted in self._failed:
                return
            try:
                self._swap(await self.load(wanted), "store pointer change")
            except ModelStoreError as exc:
                self._failed[wanted] = str(exc)
                if self.current is None:
                    self.reason = f"active version {wanted} refused: {exc}"
                log.error("refusing to serve %s: %s", wanted, exc)

    async def follow(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.sync_with_store()
