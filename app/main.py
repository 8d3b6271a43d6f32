"""Wiring only: settings, store, batcher, model host, middleware, routers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app import errors
from app.batcher import MicroBatcher
from app.model_host import Loaded, ModelHost
from app.observability import Metrics, RequestObserver, configure_logging
from app.routes import health, models, parity, predict
from app.settings import Settings
from model_store.preprocessing import DecodeLimits
from model_store.store import open_store


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    def on_swap(loaded: Loaded, how: str) -> None:
        metrics.active.clear()
        metrics.active.labels(loaded.name, loaded.version, loaded.manifest_sha256).set(1)
        metrics.parity_ok.set(1 if loaded.parity.passed else 0)
        metrics.parity_diff.set(loaded.parity.max_abs_diff)
        metrics.swaps.labels(how).inc()

    def on_batch(size: int, seconds: float) -> None:
        metrics.batch_size.observe(size)
        metrics.batch_seconds.observe(seconds)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging()
        batcher = MicroBatcher(settings.max_batch, settings.batch_wait_ms / 1000, settings.queue_bound, on_batch)
        batcher.start()
        host = ModelHost(
            open_store(settings.store, settings.public_key),
            batcher,
            device=settings.device,
            limits=DecodeLimits(settings.max_image_bytes, settings.max_pixels),
            decode_threads=settings.decode_threads,
            on_swap=on_swap,
            on_refusal=lambda code: metrics.refusals.labels(code).inc(),
        )
        app.state.host = host
        # Load in the background: /healthz answers at once, /readyz turns 200 when proven.
        tasks = [asyncio.create_task(host.sync_with_store(), name="initial-load")]
        if settings.follow_interval_s > 0:
            tasks.append(asyncio.create_task(host.follow(settings.follow_interval_s), name="follow-store"))
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await batcher.stop()
            host.close()

    app = FastAPI(
        title="Parcel damage detection",
        version="1",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    errors.install(app)
    app.add_middleware(RequestObserver, metrics=metrics)
    for r in (predict.router, parity.router, models.router, health.router):
        app.include_router(r)
    return app
