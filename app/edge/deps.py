"""Dependencies, declared once: handlers read `service: ServiceDep`, `loaded: PinnedDep`, `actor: AdminDep`.

All are `async def`: FastAPI runs a plain `def` dependency in a thread pool, which would
cost every request a round trip to another thread for a dictionary lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from pydantic import SecretStr

from app.edge.errors import APIError
from app.edge.stations import STATION_HEADER, bearer, station_of, unauthorized
from app.ops.drift import UNASSIGNED
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
    token = bearer(request)
    if token is None:
        raise APIError(401, "unauthorized", "send Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})
    failures = token_failures(request)
    failures.check(request)
    expected = settings.admin_token.get_secret_value()
    if not _matches(token, settings.admin_token):
        failures.record(request)
        raise APIError(401, "unauthorized", "invalid bearer token", {"WWW-Authenticate": "Bearer"})
    who = request.headers.get("x-actor", "api")[:64]
    client = request.client.host if request.client else "unknown"
    token_id = hashlib.sha256(expected.encode()).hexdigest()[:8]
    return f"{who}@{client} (token {token_id})"


def identify_station(request: Request, service: Service) -> str:
    """The station of a predict request (`app.edge.stations`): the header's when no station
    tokens file is set, else the bearer token's (checked before a byte of the body is read)."""
    named = station_of(request.headers.get(STATION_HEADER))
    tokens = service.station_tokens
    if tokens is None:
        return named
    token = bearer(request)
    if token is None:
        raise unauthorized("send Authorization: Bearer <the station's token>; this service knows its stations")
    failures = token_failures(request)
    failures.check(request)
    station = tokens.station_for(token)
    if station is None:
        if _matches(token, service.settings.admin_token):
            return named  # the management token (the console's "try an image") names any station
        failures.record(request)
        raise unauthorized("unknown station token")
    _same_station(named, station)
    return station


def feedback_identity(request: Request, service: Service) -> tuple[str, str | None]:
    """Who labels, and the station whose captures they may label (None: any, the management
    token): a station's own token (with a tokens file), the shared `APP_STATION_TOKEN`
    with the station it names, or the management token."""
    tokens = service.station_tokens
    if tokens is not None:
        token = bearer(request)
        station = tokens.station_for(token) if token else None
        if station is not None:
            _same_station(station_of(request.headers.get(STATION_HEADER)), station)
            return f"station {station}", station
        return check_admin(request), None  # counts a wrong token
    actor = check_station(request)
    return (actor, station_of(request.headers.get(STATION_HEADER))) if actor == "station" else (actor, None)


def _same_station(named: str, station: str) -> None:
    if named not in (UNASSIGNED, station):
        raise APIError(403, "station_mismatch", f"X-Station-ID names {named}, but this token is {station}'s")


def check_station(request: Request) -> str:
    """A station token (APP_STATION_TOKEN) or the management token, for `POST /v1/feedback`."""
    settings = request.app.state.service.settings
    if settings.station_token is not None:
        token_failures(request).check(request)  # before the comparison: a locked-out guess learns nothing
        token = bearer(request)
        if token is not None and _matches(token, settings.station_token):
            return "station"
    return check_admin(request)  # counts a wrong token


def _matches(token: str, secret: SecretStr | None) -> bool:
    """`token` is the configured secret (constant-time comparison); never when none is set."""
    return secret is not None and hmac.compare_digest(token.encode(), secret.get_secret_value().encode())


# --- wrong tokens slow their client down ----------------------------------------------

TOKEN_FAILURES = 10  # wrong tokens from one client address within the window before it is refused
TOKEN_WINDOW_S = 60.0
TOKEN_CLIENTS = 4096  # addresses remembered; the oldest is forgotten first


class TokenFailures:
    """Wrong bearer tokens per client address in a sliding window. Past `TOKEN_FAILURES`, the
    address gets 429 with Retry-After for any token, right or wrong, until its oldest failure
    leaves the window: guessing a 16-character token at 10 a minute is hopeless, and no
    coroutine sleeps (a delay would hold a connection and a task per guess). The table holds
    at most `TOKEN_CLIENTS` addresses of at most `TOKEN_FAILURES` times each.

    Behind a proxy every client has the proxy's address: one guesser then locks out all
    management for up to a minute, which is the safer side to fail on.
    """

    def __init__(self) -> None:
        self._times: OrderedDict[str, deque[float]] = OrderedDict()

    @staticmethod
    def _client(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._times.get(client)
        while times and times[0] <= now - TOKEN_WINDOW_S:
            times.popleft()
        if times is not None and not times:
            del self._times[client]
            return None
        return times

    def check(self, request: Request) -> None:
        now = time.monotonic()
        times = self._recent(self._client(request), now)
        if times is not None and len(times) >= TOKEN_FAILURES:
            wait = max(1, math.ceil(times[0] + TOKEN_WINDOW_S - now))
            raise APIError(
                429,
                "too_many_token_failures",
                f"{len(times)} wrong tokens from this address in {TOKEN_WINDOW_S:g} s; retry in {wait} s",
                {"Retry-After": str(wait)},
            )

    def record(self, request: Request) -> None:
        client, now = self._client(request), time.monotonic()
        times = self._recent(client, now)
        if times is None:
            times = self._times[client] = deque(maxlen=TOKEN_FAILURES)
            if len(self._times) > TOKEN_CLIENTS:
                self._times.popitem(last=False)
        self._times.move_to_end(client)
        times.append(now)


def token_failures(request: Request) -> TokenFailures:
    """The app's table (one per app, created on first use)."""
    state = request.app.state
    table: TokenFailures | None = getattr(state, "token_failures", None)
    if table is None:
        table = state.token_failures = TokenFailures()
    return table


ServiceDep = Annotated[Service, Depends(get_service)]
PinnedDep = Annotated[Loaded, Depends(pinned)]
AdminDep = Annotated[str, Depends(require_admin)]
