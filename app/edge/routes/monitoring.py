"""GET /v1/monitoring: drift and the estimated quality per station of the served version, and
the figures on inspectors' labels (all stations, and beside each station's estimate) when
capture is on. The whole fleet's: this replica's live windows merged with every other
replica's last summary in the store (`app.ops.summaries`), and each replica's freshness."""

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
    """Per station of the served version, over every replica's windows: window, decision rate,
    PSI per feature, precision, recall, false-alarm rate and cost per parcel estimated without
    labels, alarms; the same figures on inspectors' labels when capture is on; and the
    replicas whose windows are merged (`replicas`), with how fresh each one's summary is."""
    loaded = service.host.current
    view = await service.summaries.view() if service.summaries is not None else None
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
        "fleet": view.fleet if view is not None else False,
        "replica": service.settings.replica,
        "replicas": view.replicas if view is not None else [],
        "skipped": view.skipped if view is not None else [],  # summary objects that could not be used
        "fleet_error": view.error if view is not None else None,
    }
    if loaded is None:
        return body
    reference = loaded.manifest.monitoring
    if reference is not None:
        body["reference"] = {"images": reference.images, "decision_rate": reference.decision_rate}
    body["stations"] = await service.monitor.report(loaded, view.others if view is not None else None)
    if service.capture is not None:
        feedback = await service.host.store_call(service.capture.feedback, loaded.version, loaded.manifest.decision)
        for entry in body["stations"]:
            entry["labelled"] = feedback["stations"].get(entry["station"])
        body["feedback"] = feedback
    return body
