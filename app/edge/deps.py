"""Dependencies, declared once: handlers read `service: ServiceDep`, `loaded: PinnedDep`, `actor: AdminDep`.

All are `async def`: FastAPI runs a plain `def` dependency in a thread pool, which would
cost every request a round trip to another thread for a dictionary lookup.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from app.edge.errors import APIError
from app.ops.model_host import Loaded
from app.service import Service


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def pinned(request: Request) -> AsyncIterator[Loaded]:
    """The version that serves this request, pinned on arrival and kept loaded until it is answered."""
    with (await get_service(request)).host.pinned() as loaded:
        request.state.version = loaded.version
        yield loaded


# Declares the bearer scheme in the OpenAPI document (and the "Authorize" button of /docs);
# the check itself is `check_admin`, which answers in our JSON error format.
BEARER = HTTPBearer(auto_error=False, scheme_name="bearer", description="APP_ADMIN_TOKEN (or APP_STATION_TOKEN)")
SECURED: list[dict[str, list[str]]] = [
    {BEARER.scheme_name: []}
]  # `openapi_extra` security of routes that check a token themselves


async def require_admin(request: Request, _: Annotated[object, Depends(BEARER)]) -> str:
    """Bearer-token check; returns the actor for the audit log."""
    return check_admin(request)


def check_admin(request: Request) -> str:
    """The token check itself, for routes that need it only sometimes (`/v1/parity?version=`)."""
    settings = request.app.state.service.settings
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


ServiceDep = Annotated[Service, Depends(get_service)]
PinnedDep = Annotated[Loaded, Depends(pinned)]
AdminDep = Annotated[str, Depends(require_admin)]
