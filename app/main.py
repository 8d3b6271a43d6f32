"""Wiring only: settings, store, pipeline, model host, middleware, routers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

from fastapi import FastAPI
from prometheus_client.core import GaugeMetricFamily, Metric

from app import errors
from app.capture import Capturer
from app.errors import JSONLines
from app.model_host import Loaded, ModelHost
from app.monitor import Monitor
from app.observability import Metrics, RequestObserver, configure_logging, counter, gauge
from app.pipeline import Pipeline
from app.routes import health, models, monitoring, parity, predict, shadow
from app.routes.predict import PredictFastPath
from app.service import Service
from app.settings import Settings
from app.upload import clean_stale, upload_root
from model_store.capture import open_capture
from model_store.preprocessing import DecodeLimits
from model_store.store import open_store

log = logging.getLogger("app.main")


def shadow_metrics(host: ModelHost) -> Iterator[Metric]:
    run = host.shadow
    if run is None:
        return
    s = run.stats
    version = {"version": s.version}
    yield counter("shadow_images", "Images scored by the shadow version", ["version"], {(s.version,): s.images})
    flips: dict[tuple[str, ...], float] = {
        (s.version, "to_positive"): s.to_positive,
        (s.version, "to_negative"): s.to_negative,
    }
    yield counter("shadow_flips", "Decisions the shadow would change", ["version", "direction"], flips)
    yield counter(
        "shadow_dropped", "Sampled requests not shadowed (queue full)", ["version"], {(s.version,): s.dropped}
    )
    if s.images:
        yield gauge("shadow_agreement_ratio", "Shadow decisions equal to the served ones", s.agree / s.images, version)
        yield gauge("shadow_mean_abs_probability_diff", "Mean |shadow - served|", s.abs_diff_sum / s.images, version)


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    def on_swap(loaded: Loaded, how: str) -> None:
        metrics.active.clear()
        metrics.active.labels(loaded.name, loaded.version, loaded.manifest_sha256).set(1)
        metrics.parity_ok.set(1 if loaded.parity.passed else 0)
        metrics.parity_diff.set(loaded.parity.max_abs_diff)
        metrics.swaps.labels(how).inc()
        service = getattr(app.state, "service", None)
        if service is not None:
            service.monitor.forget({loaded.version})  # windows of versions no longer served

    def on_batch(images: int, decode_s: float, forward_s: float) -> None:
        metrics.batch_size.observe(images)
        metrics.decode_seconds.observe(decode_s)
        metrics.batch_seconds.observe(forward_s)

    def on_follow_error() -> None:
        metrics.follow_errors.inc()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging()
        if not settings.loopback_only:
            log.warning(
                "listening on %s, not only on this machine: any network that reaches it can send predictions "
                "(management still needs the token); put it behind a proxy or firewall you control",
                settings.host,
            )
        pipeline = Pipeline(
            workers=settings.workers,
            device=settings.device,
            threads_per_worker=settings.worker_threads,
            max_batch=settings.max_batch,
            queue_bound=settings.queue_bound,
            max_pending_pixels=settings.max_pending_megapixels * 1_000_000,
            limits=DecodeLimits(settings.max_image_bytes, settings.max_pixels),
            on_batch=on_batch,
        )
        host = ModelHost(
            open_store(settings.store, settings.public_key),
            pipeline,
            on_swap=on_swap,
            on_refusal=lambda code: metrics.refusals.labels(code).inc(),
            on_follow_error=on_follow_error,
        )

        def live() -> Iterator[Metric]:
            yield gauge("queue_depth_images", "Images queued or in a forward pass", pipeline.queued_images)
            yield gauge("queue_depth_megapixels", "Decode work queued or in progress", pipeline.queued_pixels / 1e6)
            yield gauge("inference_workers", "Inference processes", pipeline.workers)
            busy: dict[tuple[str, ...], float] = {(str(i),): s for i, s in enumerate(pipeline.worker_busy_seconds())}
            yield counter("worker_busy_seconds", "Seconds each worker spent on a frame", ["worker"], busy)
            yield counter(
                "worker_restarts", "Inference workers started again after dying", [], {(): pipeline.worker_restarts()}
            )
            metrics.follow_healthy.set(1 if host.follow_status.healthy else 0)
            yield from shadow_metrics(host)
            drift: dict[tuple[str, ...], float] = {
                (station, feature): value for station, feature, value in app.state.service.monitor.gauges(host.current)
            }
            if drift:
                family = GaugeMetricFamily(
                    "drift_psi", "PSI of live inputs vs the bundle's reference", labels=["station", "feature"]
                )
                for key, value in drift.items():
                    family.add_metric(list(key), value)
                yield family

        metrics.watch(live)
        monitor = Monitor(settings.monitor_window, settings.max_stations)
        capture = None
        if settings.capture_fraction > 0:
            store = open_capture(settings.capture_store)
            days = settings.capture_max_age_days
            capture = Capturer(
                store, settings.capture_fraction, settings.capture_max_megabytes * 1_000_000, days * 86400
            )
        app.state.service = Service(settings, host, metrics, monitor, capture)
        stale = clean_stale(upload_root())  # left by a process killed mid-upload
        if stale:
            log.warning("removed %d upload folder(s) left by a stopped process", stale)
        await pipeline.start()
        # Load in the background: /healthz answers at once, /readyz turns 200 when proven.
        follow = asyncio.create_task(host.follow(settings.follow_interval_s), name="follow-store")
        try:
            yield
        finally:
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)
            await pipeline.close()

    app = FastAPI(
        title="Parcel damage detection",
        version="1",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        default_response_class=JSONLines,
    )
    errors.install(app)
    app.add_middleware(PredictFastPath, fastapi=app)
    app.add_middleware(RequestObserver, metrics=metrics)  # outermost of ours: sees every request
    for r in (predict.router, parity.router, models.router, shadow.router, monitoring.router, health.router):
        app.include_router(r)
    return app
