"""Watching production: drift per station, inspectors' feedback, the audit log."""

from __future__ import annotations

import hmac
import time
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from app.deps import SECURED, AdminDep, ServiceDep, check_admin
from app.errors import APIError
from app.schemas import AuditOut, error_responses
from model_store import monitoring as mon
from model_store.capture import CaptureNotFound

router = APIRouter(prefix="/v1", tags=["monitoring"])


@router.get("/monitoring", responses=error_responses(401, 403, 503))
async def monitoring(_: AdminDep, service: ServiceDep) -> dict[str, Any]:
    """Per station of the served version: window, decision rate, PSI per feature, alarms;
    and precision/recall on inspectors' labels when capture is on."""
    loaded = service.host.current
    body: dict[str, Any] = {
        "version": loaded.version if loaded else None,
        "thresholds": {"psi_warn": mon.PSI_WARN, "psi_alarm": mon.PSI_ALARM, "min_images": mon.MIN_IMAGES},
        "window": service.settings.monitor_window,
        "reference": None,
        "stations": [],
        "feedback": None,
    }
    if loaded is None:
        return body
    reference = loaded.manifest.monitoring
    if reference is not None:
        body["reference"] = {"images": reference.images, "decision_rate": reference.decision_rate}
    body["stations"] = service.monitor.report(loaded)
    if service.capture is not None:
        positive = loaded.manifest.decision.positive_label
        body["feedback"] = await service.host.store_call(service.capture.feedback, loaded.version, positive)
    return body


class Feedback(BaseModel):
    request_id: str = Field(min_length=1, max_length=64)
    labels: list[str] = Field(min_length=1, max_length=64, description="the inspector's label per image, in order")
    inspector: str = Field("", max_length=128)
    note: str = Field("", max_length=1000)


def _feedback_actor(request: Request) -> str:
    """A station token or the management token."""
    settings = request.app.state.service.settings
    if settings.station_token is not None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expected = settings.station_token.get_secret_value()
        if scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), expected.encode()):
            return "station"
    return check_admin(request)


@router.post(
    "/feedback",
    status_code=201,
    responses=error_responses(400, 401, 403, 404, 409, 422, 503),
    openapi_extra={"security": SECURED},
)
async def feedback(body: Feedback, request: Request, service: ServiceDep) -> dict[str, Any]:
    """An inspector's labels for a captured request (station token or management token)."""
    actor = _feedback_actor(request)
    capture = service.capture
    if capture is None:
        raise APIError(409, "capture_off", "feedback needs captured requests: set APP_CAPTURE_FRACTION above 0")
    try:
        record = await service.host.store_call(capture.store.record, body.request_id)
    except CaptureNotFound as exc:
        raise APIError(404, "request_not_captured", str(exc)) from None
    if len(body.labels) != len(record["images"]):
        raise APIError(422, "invalid_labels", f"request {body.request_id} has {len(record['images'])} image(s)")
    loaded = service.host.current
    if loaded is not None and loaded.version == record["version"]:
        decision = loaded.manifest.decision
    else:  # captured under another version: its own labels
        decision = (await service.host.store_call(service.host.store.manifest, record["version"])).decision
    allowed = {decision.positive_label, decision.negative_label}
    wrong = sorted(set(body.labels) - allowed)
    if wrong:
        raise APIError(422, "invalid_labels", f"labels {wrong} are not among {sorted(allowed)}")
    label = {"labels": body.labels, "inspector": body.inspector, "note": body.note, "by": actor, "time": time.time()}
    await service.host.store_call(capture.store.put_label, body.request_id, label)
    capture.invalidate()
    return {"request_id": body.request_id, "labels": body.labels, "version": record["version"]}


@router.get("/audit", response_model=list[AuditOut], responses=error_responses(401, 403, 422, 503))
async def audit(_: AdminDep, service: ServiceDep, limit: int = Query(100, ge=1, le=10_000)) -> list[AuditOut]:
    """The store's audit log, newest last."""
    entries = await service.host.store_call(service.host.store.audit_log)
    return [AuditOut.of(e) for e in entries[-limit:]]
