"""API errors: a stable `error` code, a human `message`, the right status, and always JSON.

Anything unexpected becomes a JSON 500 naming the request id, logged once with its
traceback, in `app.edge.observability.RequestObserver` (the outermost layer we own, so the
server never sees the exception and never answers in plain text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from app.ops.model_host import NotReady
from app.serving.workers import WorkerFailed
from model_store import errors as E
from model_store.capture import CaptureError, CaptureFull, CaptureNotFound
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
    (WorkerFailed, 503),  # a worker died or was replaced: retry shortly, another will answer
    (E.ImageTooLarge, 413),
    (E.ImageError, 422),
    (E.VersionNotFound, 404),
    (E.VersionConflict, 409),
    (E.InvalidVersionName, 422),
    (E.NothingToRollBack, 409),
    (E.VersionRevoked, 409),
    (E.CanaryConflict, 409),
    (E.InvalidCanary, 422),
    (E.InvalidPolicy, 422),
    (E.ParityFailed, 409),
    (E.BundleError, 422),
    (E.StoreError, 503),  # the store is unreachable or inconsistent: not the client's doing
    (CaptureNotFound, 404),
    (CaptureFull, 507),  # Insufficient Storage: retrying will not help until someone frees space
    (CaptureError, 503),  # the capture store failed: not the client's doing either
]


def status_for(exc: E.ModelStoreError) -> int:
    return next((status for cls, status in _STATUS if isinstance(exc, cls)), 500)


# A client never sees where the server keeps things: store messages name the store's
# directory or bucket, bundle and upload messages their temporary folders, OS errors their
# files. Any absolute path of two components or more, and any s3:// location, is replaced
# in every refusal (the log keeps the operator's view). API paths (/v1/...) are not
# server paths; a path a client sent inside a name (`../../etc/passwd`) stays recognisable.
_SERVER_PATH = re.compile(r"s3://[^\s'\":]*|(?<![\w./:-])/(?!v1/)[\w.@+~-]+(?:/[\w.@+~-]*)+")
SERVER_PATH = "(a server path)"


def redact(message: str) -> str:
    return _SERVER_PATH.sub(SERVER_PATH, message)


def body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": redact(message), **extra}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, *, oip: bool = False
) -> Response:
    # The Open Inference Protocol's clients (tritonclient, KServe) read one string, `error`.
    content = {"error": f"{code}: {redact(message)}"} if oip else body(code, message)
    return JSONLines(content, status_code=status, headers=headers)


def is_oip(request: Request) -> bool:
    """A request to the Open Inference Protocol's routes (/v2), whose errors have its shape."""
    path: str = request.scope["path"]
    return path == "/v2" or path.startswith("/v2/")


def response_for(exc: APIError | E.ModelStoreError | NotReady, *, oip: bool = False) -> Response:
    """The JSON error for a refusal; FastAPI's handlers and the predict fast path both use it."""
    if isinstance(exc, APIError):
        return error_response(exc.status, exc.code, exc.message, exc.headers, oip=oip)
    if isinstance(exc, NotReady):  # the one "not ready": every route that pins a version raises it
        message = f"no model is being served yet: {exc}"
        return error_response(503, "not_ready", message, {"Retry-After": "5"}, oip=oip)
    status = status_for(exc)
    return error_response(status, exc.code, str(exc), {"Retry-After": "5"} if status == 503 else None, oip=oip)


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> Response:
        return response_for(exc, oip=is_oip(request))

    @app.exception_handler(E.ModelStoreError)
    async def _store(request: Request, exc: E.ModelStoreError) -> Response:
        return response_for(exc, oip=is_oip(request))

    @app.exception_handler(NotReady)
    async def _not_ready(request: Request, exc: NotReady) -> Response:
        return response_for(exc, oip=is_oip(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        problems = exc.errors()
        # A version name outside the store's pattern is refused by the framework now that the
        # document declares it: the same code as when the store refused it.
        names = all(
            e.get("loc", ())[-1:] == ("version",) and e.get("type") == "string_pattern_mismatch" for e in problems
        )
        code = "invalid_version_name" if problems and names else "invalid_request"
        return error_response(422, code, describe_validation_errors(problems), oip=is_oip(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc.__cause__, ClientDisconnect):
            # FastAPI turns a client hanging up mid-body into "400 error parsing the body":
            # nobody is left to answer, and it is counted and logged as 499, not as a 400.
            raise exc.__cause__
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route with this path only; a path
            # may have several (GET and POST /v1/models).
            headers["Allow"] = allowed_methods(app, request.scope)
        return error_response(exc.status_code, code, str(exc.detail), headers, oip=is_oip(request))


def allowed_methods(app: FastAPI, scope: Mapping[str, Any]) -> str:
    """Every method some route answers at this request's path, for a 405's `Allow` header."""
    return ", ".join(
        m for m in _METHODS if any(r.matches({**scope, "method": m})[0] == Match.FULL for r in app.router.routes)
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
