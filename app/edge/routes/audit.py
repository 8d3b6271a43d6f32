"""GET /v1/audit: the store's audit log."""

from __future__ import annotations

from fastapi import APIRouter, Query

from app.edge.deps import AdminDep, ServiceDep
from app.edge.schemas import AuditOut, error_responses

router = APIRouter(prefix="/v1", tags=["monitoring"])


@router.get("/audit", response_model=list[AuditOut], responses=error_responses(401, 403, 422, 503))
async def audit(_: AdminDep, service: ServiceDep, limit: int = Query(100, ge=1, le=10_000)) -> list[AuditOut]:
    """The store's audit log, newest last."""
    entries = await service.host.store_call(service.host.store.audit_log)
    return [AuditOut.of(e) for e in entries[-limit:]]
