"""What every route needs, built once at startup: settings, the model host (and its
pipeline), metrics, and the request-body limits derived from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Response

from app.capture import Capturer
from app.errors import error_response
from app.intake import BodyLimits
from app.model_host import ModelHost, NotReady
from app.monitor import Monitor
from app.observability import Metrics
from app.settings import Settings


@dataclass(frozen=True)
class Service:
    settings: Settings
    host: ModelHost
    metrics: Metrics
    monitor: Monitor
    capture: Capturer | None  # None: capture is off

    @property
    def body_limits(self) -> BodyLimits:
        s = self.settings
        return BodyLimits(s.max_image_bytes, s.max_images_per_request, s.max_request_bytes)


def not_ready(exc: NotReady) -> Response:
    return error_response(503, "not_ready", f"no model is being served yet: {exc}", {"Retry-After": "5"})
