"""API errors: a stable `error` code, a human `message`, and the right status."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_store import errors as E
from model_store.errors import describe_validation_errors


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
    (E.ParityFailed, 409),
    (E.BundleError, 422),
    (E.StoreError, 500),
]


def status_for(exc: E.ModelStoreError) -> int:
    return next((status for cls, status in _STATUS if isinstance(exc, cls)), 500)


def body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(E.ModelStoreError)
    async def _store(request: Request, exc: E.ModelStoreError) -> JSONResponse:
        return JSONResponse(body(exc.code, str(exc)), status_code=status_for(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(body("invalid_request", describe_validation_errors(exc.errors())), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)
