"""GET /v1/parity: the bundle's reference images through the same pipeline as /v1/predict."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.deps import SECURED, ServiceDep, check_admin
from app.errors import APIError, JSONLines
from app.model_host import NotReady
from app.schemas import ParityResponse, VersionQuery, error_responses

router = APIRouter(prefix="/v1", tags=["parity"])


@router.get(
    "/parity",
    response_model=ParityResponse,
    responses={
        409: {"model": ParityResponse, "description": "a reference image is out of tolerance (`parity_failed`)"},
        **error_responses(401, 403, 404, 422, 503),
    },
    # The token is needed only with `?version=`: no security, or the bearer scheme.
    openapi_extra={"security": [{}, *SECURED]},
)
async def parity(request: Request, service: ServiceDep, version: VersionQuery = None) -> Response:
    """200 when every reference image is within tolerance (and keeps its decision) on every
    inference worker, else 409.

    `?version=V` checks a stored bundle before activation (management token required).
    """
    host = service.host
    if version is None:
        try:
            loaded = host.pin()
        except NotReady as exc:
            raise APIError(503, "not_ready", f"no model is being served yet: {exc}", {"Retry-After": "5"}) from None
        try:
            request.state.version = loaded.version
            report = await host.pipeline.parity(loaded.version)
        finally:
            host.unpin(loaded)
    else:
        check_admin(request)
        request.state.version = version
        report = await host.check(version)
    body = ParityResponse.of(report).model_dump()
    if not report.passed:
        body = {"error": "parity_failed", "message": report.summary(), **body}
    return JSONLines(body, status_code=200 if report.passed else 409)
