"""Dependencies, declared once: handlers read `host: HostDep`, `loaded: PinnedDep`, `_: AdminDep`."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from app.errors import APIError
from app.model_host import Loaded, ModelHost, NotReady
from app.observability import Metrics
from app.settings import Settings


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_host(request: Request) -> ModelHost:
    host: ModelHost = request.app.state.host
    return host


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def pinned(request: Request) -> AsyncIterator[Loaded]:
    """The version that serves this request, pinned on arrival and kept loaded until it is answered."""
    host = get_host(request)
    try:
        loaded = host.pin()
    except NotReady as exc:
        raise APIError(503, "not_ready", f"no model is being served yet: {exc}", {"Retry-After": "5"}) from None
    request.state.version = loaded.version
    try:
        yield loaded
    finally:
        host.unpin(loaded)


def require_admin(request: Request) -> str:
    """Bearer-token check; returns the actor for the audit log."""
    settings: Settings = request.app.state.settings
    if settings.admin_token is None:
        raise APIError(403, "management_disabled", "management API is off: set APP_ADMIN_TOKEN to enable it")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise APIError(401, "unauthorized", "send Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})
    expected = settings.admin_token.get_secret_value()
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise APIError(401, "unauthorized", "invalid bearer token", {"WWW-Authenticate": "Bearer"})
    who = request.headers.get("x-actor", "api")[:64]
    client = request.client.host if request.client else "unknown"
    token_id = hashlib.sha256(expected.encode()).hexdigest()[:8]
    return f"{who}@{client} (token {token_id})"


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
HostDep = Annotated[ModelHost, Depends(get_host)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
PinnedDep = Annotated[Loaded, Depends(pinned)]
AdminDep = Annotated[str, Depends(require_admin)]
