"""Shadow evaluation: a stored version scores a share of live traffic after each response.

`PUT /v1/shadow` verifies the version and passes its parity on this replica's workers,
then records it in the store, so every replica following the store shadows it too.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app.edge.deps import AdminDep, ServiceDep
from app.edge.intake import json_body, read_json, read_optional_json
from app.edge.schemas import AuditOut, error_responses
from model_store.manifest import VERSION_PATTERN

router = APIRouter(prefix="/v1/shadow", tags=["shadow"], responses=error_responses(401, 403, 503))


class ShadowRequest(BaseModel):
    version: str = Field(pattern=VERSION_PATTERN)
    fraction: float = Field(0.1, gt=0, le=1, description="share of predict requests it also scores")
    reason: str = Field("", max_length=500)


class ShadowOff(BaseModel):
    reason: str = Field("", max_length=500)


@router.get("")
async def shadow_status(_: AdminDep, service: ServiceDep) -> dict[str, Any]:
    """The shadow version's comparison with the served one (null when there is none)."""
    run = service.host.shadow
    served = service.host.current
    return {"served": served.version if served else None, "shadow": run.stats.as_dict() if run else None}


# The bodies are read by the handlers after the token check (`read_json`), never before it.
@router.put(
    "",
    response_model=AuditOut,
    responses=error_responses(400, 404, 408, 409, 413, 422),
    openapi_extra={"requestBody": json_body(ShadowRequest)},
)
async def put_shadow(request: Request, actor: AdminDep, service: ServiceDep) -> AuditOut:
    body = await read_json(request, ShadowRequest)
    entry = await service.host.set_shadow(body.version, fraction=body.fraction, actor=actor, reason=body.reason)
    return AuditOut.of(entry)


@router.delete(
    "",
    response_model=AuditOut,
    responses=error_responses(400, 408, 413, 422),
    openapi_extra={"requestBody": json_body(ShadowOff, required=False)},
)
async def delete_shadow(request: Request, actor: AdminDep, service: ServiceDep) -> AuditOut:
    body = await read_optional_json(request, ShadowOff)
    entry = await service.host.set_shadow(None, fraction=1.0, actor=actor, reason=body.reason if body else "")
    return AuditOut.of(entry)
