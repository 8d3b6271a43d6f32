"""GET /v1/parity: the bundle's reference images through the same path as /v1/predict."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.deps import HostDep, require_admin
from app.errors import APIError
from app.model_host import NotReady
from app.schemas import ParityResponse
from model_store.predictor import Predictor

router = APIRouter(prefix="/v1", tags=["parity"])


@router.get("/parity", response_model=ParityResponse, responses={409: {"model": ParityResponse}})
async def parity(request: Request, host: HostDep, version: str | None = None) -> JSONResponse:
    """200 when every reference image is within tolerance (and keeps its decision), else 409.

    `?version=V` checks a stored bundle before activation (management token required).
    """
    if version is None:
        try:
            predictor = host.require().predictor
        except NotReady as exc:
            raise APIError(503, "not_ready", f"no model is being served yet: {exc}") from None
    else:
        require_admin(request)

        def build() -> Predictor:
            return Predictor(host.store.load(version), device=host.device, limits=host.limits)

        predictor = await asyncio.to_thread(build)
    request.state.version = predictor.bundle.version
    report = await host.parity(predictor)
    body = ParityResponse.of(report).model_dump()
    if not report.passed:
        body = {"error": "parity_failed", "message": report.summary(), **body}
    return JSONResponse(body, status_code=200 if report.passed else 409)
