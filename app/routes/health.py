"""Liveness, readiness and Prometheus metrics for orchestrators."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import HostDep, MetricsDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers. Restart it if this fails."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(host: HostDep) -> JSONResponse:
    """200 only once a verified model has loaded and passed parity; 503 with the reason otherwise."""
    loaded = host.current
    if loaded is None:
        return JSONResponse({"ready": False, "reason": host.reason}, status_code=503)
    return JSONResponse(
        {
            "ready": True,
            "version": loaded.version,
            "manifest_sha256": loaded.manifest_sha256,
            "parity_max_abs_diff": loaded.parity.max_abs_diff,
            "refused": host.refused,
        }
    )


@router.get("/metrics")
async def metrics(host: HostDep, m: MetricsDep) -> Response:
    m.queue_depth.set(host.batcher.queued_images)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
