"""API errors: a stable `error` code, a human `message`, the right status, and always JSON.

Anything unexpected becomes a JSON 500 naming the request id, logged once with its
traceback, in `app.observability.RequestObserver` (the outermost layer we own, so the
server never sees the exception and never answers in plain text).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from model_store import errors as E
from model_store.capture import CaptureError, CaptureNotFound
from model_store.errors import describe_validation_errors


class JSONLines(JSONResponse):
    """JSON with a trailing newline, so `curl a; curl b` output does not run together."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode() + b"\n"


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


# Model-store refusals as HTTP: the image ones are the client's fault, bundle ones the upload's.
_STATUS: list[tuple[type[E.ModelStoreError], int]] = [
    (E.ImageTooLarge, 413),
    (E.ImageError, 422),
    (E.VersionNotFound, 404),
    (E.VersionConflict, 409),
    (E.InvalidVersionName, 422),
    (E.NothingToRollBack, 409),
    (E.VersionRevoked, 409),
    (E.ParityFailed, 409),
    (E.BundleError, 422),
    (E.StoreError, 503),  # the store is unreachable or inconsistent: not the client's doing
    (CaptureNotFound, 404),
    (CaptureError, 503),  # the capture store, likewise
]


def status_for(exc: E.ModelStoreError) -> int:
    return next((status for cls, status in _STATUS if isinstance(exc, cls)), 500)


def body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONLines(body(code, message), status_code=status, headers=headers)


def response_for(exc: APIError | E.ModelStoreError) -> Response:
    """The JSON error for a refusal; FastAPI's handlers and the predict fast path both use it."""
    if isinstance(exc, APIError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    status = status_for(exc)
    return error_response(status, exc.code, str(exc), {"Retry-After": "5"} if status == 503 else None)


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> Response:
        return response_for(exc)

    @app.exception_handler(E.ModelStoreError)
    async def _store(request: Request, exc: E.ModelStoreError) -> Response:
        return response_for(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(422, "invalid_request", describe_validation_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route with this path only; a path
            # may have several (GET and POST /v1/models).
            headers["Allow"] = allowed_methods(app, request.scope)
        return error_response(exc.status_code, code, str(exc.detail), headers)


def allowed_methods(app: FastAPI, scope: Mapping[str, Any]) -> str:
    """Every method some route answers at this request's path, for a 405's `Allow` header."""
    return ", ".join(
        m for m in _METHODS if any(r.matches({**scope, "method": m})[0] == Match.FULL for r in app.router.routes)
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
