"""Wiring only: the service (app.service), its lifespan, middleware and routers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from app.edge import docs, errors
from app.edge.errors import JSONLines
from app.edge.observability import Metrics, RequestObserver, configure_logging
from app.edge.routes import (
    audit,
    canary,
    console,
    explain,
    feedback,
    health,
    models,
    monitoring,
    parity,
    predict,
    receipts,
    shadow,
    v2,
)
from app.edge.routes.predict import PredictFastPath
from app.edge.serve import head_refusal
from app.edge.server import FRONT_DOORS, HEAD_REFUSAL
from app.edge.telemetry import live_metrics
from app.ops.upload import clean_stale, upload_root
from app.service import build_service
from app.serving.pipeline import Pipeline
from app.settings import Settings

log = logging.getLogger("app.main")


def create_app(settings: Settings, *, pipeline: Pipeline | None = None) -> FastAPI:
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        configure_logging()
        if not settings.loopback_only and settings.station_tokens_file is None:
            log.warning(
                "listening on %s, not only on this machine: any network that reaches it can send predictions "
                "(management still needs the token); put it behind a proxy or firewall you control",
                settings.host,
            )
        service = app.state.service = build_service(settings, metrics, pipeline)
        if service.receipts is not None:
            log.info("receipts on: every decision signed with key %s (GET /v1/receipts/keys)", service.receipts.kid)
        metrics.watch(lambda: live_metrics(metrics, service.host, service.monitor, service.capture, service.summaries))
        stale = clean_stale(upload_root())  # left by a process killed mid-upload
        if stale:
            log.warning("removed %d upload folder(s) left by a stopped process", stale)
        await service.host.pipeline.start()
        # Load in the background: /healthz answers at once, /readyz turns 200 when proven.
        follow = asyncio.create_task(service.host.follow(settings.follow_interval_s), name="follow-store")
        summaries = service.summaries
        tasks = [follow]
        if summaries is not None and summaries.enabled:
            tasks.append(asyncio.create_task(summaries.run(), name="window-summaries"))
        try:
            # The lifespan state reaches the HTTP protocol too: it refuses overload from a head.
            yield {HEAD_REFUSAL: head_refusal(service)}
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if summaries is not None:
                await summaries.close()
            await service.host.pipeline.close()
            service.host.close()

    app = FastAPI(
        title="Parcel damage detection",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # app.edge.docs serves /docs and /redoc with local assets
        redoc_url=None,
        default_response_class=JSONLines,
    )
    errors.install(app)
    docs.install(app)
    app.add_middleware(PredictFastPath, fastapi=app)
    app.add_middleware(RequestObserver, metrics=metrics)  # outermost of ours: sees every request
    # The same two as the HTTP protocol's door for the predict requests (`app.edge.server`):
    # under uvicorn they skip the framework's outer layers; any other server takes the chain above.
    door = RequestObserver(PredictFastPath(app, fastapi=app), metrics)
    setattr(app.state, FRONT_DOORS, (PredictFastPath.handles, door))
    for r in (
        predict.router,
        receipts.router,
        explain.router,
        v2.router,
        parity.router,
        models.router,
        shadow.router,
        canary.router,
        monitoring.router,
        feedback.router,
        audit.router,
        health.router,
        console.router,
    ):
        app.include_router(r)
    return app
