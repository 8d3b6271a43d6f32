"""Liveness, readiness and Prometheus metrics for orchestrators."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.edge.deps import ServiceDep
from app.edge.errors import JSONLines
from app.service import Service

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers. Restart it if this fails."""
    return {"status": "ok"}


def not_ready_reason(service: Service) -> str | None:
    """Why this replica cannot answer predictions now, or None when it can (/readyz, /v2)."""
    host = service.host
    if host.current is None:
        return host.reason
    if host.pipeline.pool.responsive() == 0:  # every worker dead, restarting, or stuck past its deadline
        return f"no inference worker is answering ({host.pipeline.workers} restarting or stuck)"
    return None


@router.get("/readyz", responses={503: {"description": "not ready: the body says why"}})
async def readyz(service: ServiceDep) -> Response:
    """200 only once a verified model has loaded and passed parity on every worker; 503 with
    the reason otherwise. No paths or secrets: this route needs no token.

    `store` says whether following the store works (failures in a row, since when, the last
    error's code). A replica serving a proven model stays ready while the store is down or
    hung: it keeps answering with what it has, and taking every replica out of rotation
    because their shared store is unreachable would take the whole fleet down with it.
    """
    host = service.host
    follow = host.follow_status
    store = {
        "healthy": follow.healthy,
        "consecutive_failures": follow.failures,
        "since": follow.since,
        "error": follow.error,
        "last_success": follow.last_success,
    }
    loaded = host.current
    reason = not_ready_reason(service)
    if loaded is None or reason is not None:
        return JSONLines({"ready": False, "reason": reason, "store": store}, status_code=503)
    responsive = host.pipeline.pool.responsive()
    return JSONLines(
        {
            "ready": True,
            "version": loaded.version,
            "manifest_sha256": loaded.manifest_sha256,
            "parity_max_abs_diff": loaded.parity.max_abs_diff,
            "workers": host.pipeline.workers,
            "workers_answering": responsive,
            "refused": host.refused,
            "store": store,
            "station_tokens": _station_tokens(service),
        }
    )


def _station_tokens(service: Service) -> dict[str, object] | None:
    """How many station tokens are in force, and why the file on disk is not, if it is not."""
    tokens = service.station_tokens
    return None if tokens is None else {"stations": len(tokens), "file_error": tokens.error}


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    },
)
async def metrics(service: ServiceDep) -> Response:
    await service.monitor.refresh_gauges(service.host.current)  # PSI, estimates: in a thread, every few seconds
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
