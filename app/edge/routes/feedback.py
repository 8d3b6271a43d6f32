"""POST /v1/feedback: an inspector's labels for a captured request."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app.edge.deps import SECURED, ServiceDep, feedback_identity
from app.edge.errors import APIError
from app.edge.intake import json_body, read_json
from app.edge.schemas import error_responses
from model_store.capture import not_captured

router = APIRouter(prefix="/v1", tags=["feedback"])
log = logging.getLogger("app.ops.capture")


class Feedback(BaseModel):
    request_id: str = Field(min_length=1, max_length=64, description="the `request_id` of the predict response")
    labels: list[str] = Field(min_length=1, max_length=64, description="the inspector's label per image, in order")
    inspector: str = Field("", max_length=128)
    note: str = Field("", max_length=1000)


@router.post(
    "/feedback",
    status_code=201,
    responses=error_responses(401, 403, 404, 408, 409, 413, 422, 503, 507),
    # The body is read by the route itself, after the token check (`read_json`).
    openapi_extra={"security": SECURED, "requestBody": json_body(Feedback)},
)
async def feedback(request: Request, service: ServiceDep) -> dict[str, Any]:
    """An inspector's labels for a captured request: by the station that sent it (station
    token and its `X-Station-ID`), or by anyone with the management token (a correction).
    A later label replaces an earlier one; each records who gave it, and the log has them all."""
    # The token first, the body after: a caller without one costs no read at all (FastAPI
    # would read and parse a declared body before any check in the route).
    actor, station = feedback_identity(request, service)
    capture = service.capture
    if capture is None:
        raise APIError(409, "capture_off", "feedback needs captured requests: set APP_CAPTURE_FRACTION above 0")
    body = await read_json(request, Feedback)
    record = await service.host.store_call(capture.store.record, body.request_id)
    if station is not None and record["station"] != station:
        raise not_captured(body.request_id)  # as if absent: another station's ids are not confirmed
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
    label = {
        "labels": body.labels,
        "inspector": body.inspector,
        "note": body.note,
        "by": actor,
        "station": station,
        "time": time.time(),
    }
    await service.host.store_call(capture.store.put_label, body.request_id, label)
    capture.invalidate()
    log.info(
        {"message": "feedback", "capture": body.request_id, "labels": body.labels, "by": actor, "station": station}
    )
    return {"request_id": body.request_id, "labels": body.labels, "version": record["version"]}
