"""GET /v1/monitoring: drift and the estimated quality per station of the served version, and
the figures on inspectors' labels (all stations, and beside each station's estimate) when
capture is on."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter

from app.edge.deps import AdminDep, ServiceDep
from app.edge.schemas import error_responses
from model_store import monitoring as mon

router = APIRouter(prefix="/v1", tags=["monitoring"])
log = logging.getLogger("app.ops.capture")


@router.get("/monitoring", responses=error_responses(401, 403, 503))
async def monitoring(_: AdminDep, service: ServiceDep) -> dict[str, Any]:
    """Per station of the served version: window, decision rate, PSI per feature, precision,
    recall, false-alarm rate and cost per parcel estimated without labels, alarms; and the
    same figures on inspectors' labels when capture is on."""
    loaded = service.host.current
    body: dict[str, Any] = {
        "version": loaded.version if loaded else None,
        "thresholds": {
            "psi_warn": mon.PSI_WARN,
            "psi_alarm": mon.PSI_ALARM,
            "min_images": mon.MIN_IMAGES,
            "cost_alarm_margin": service.settings.cost_alarm_margin,
        },
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
    body["stations"] = await service.monitor.report(loaded)
    if service.capture is not None:
        feedback = await service.host.store_call(service.capture.feedback, loaded.version, loaded.manifest.decision)
        for entry in body["stations"]:
            entry["labelled"] = feedback["stations"].get(entry["station"])
        body["feedback"] = feedback
    return body
