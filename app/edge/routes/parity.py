"""GET /v1/parity: the bundle's reference images through the same pipeline as /v1/predict."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.edge.deps import SECURED, ServiceDep, check_admin
from app.edge.errors import JSONLines
from app.edge.schemas import ParityResponse, VersionQuery, error_responses

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
    inference worker, else 409. The served version's result is reused for 10 s (`Age` header).

    `?version=V` checks a stored bundle before activation (management token required).
    """
    host = service.host
    if version is None:
        with host.pinned() as loaded:
            request.state.version = loaded.version
            report, age = await host.served_parity(loaded)
    else:
        check_admin(request)
        request.state.version = version
        report, age = await host.check(version), 0.0
    body = ParityResponse.of(report).model_dump()
    if not report.passed:
        body = {"error": "parity_failed", "message": report.summary(), **body}
    # Age: seconds since the run (results are reused for a few seconds, app.ops.model_host.PARITY_CACHE_S).
    return JSONLines(body, status_code=200 if report.passed else 409, headers={"Age": str(int(age))})
