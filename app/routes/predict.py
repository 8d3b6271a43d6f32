"""POST /v1/predict: one raw image body, or several multipart `files`.

`serve_predict` is the whole route. FastAPI runs it for the OpenAPI document and as a
fallback; in the service, `PredictFastPath` runs it first, without the framework's routing,
dependency solving and exception layers, which cost the front process about a fifth of its
time per request on the hottest path (docs/performance.md). Both pin the served version
the same way and answer errors with the same `response_for`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.background import BackgroundTasks
from starlette.types import ASGIApp, Receive, Scope, Send

from app.deps import PinnedDep, ServiceDep
from app.errors import APIError, JSONLines, response_for
from app.intake import read_images
from app.model_host import Loaded, NotReady
from app.monitor import STATION_HEADER, station_of
from app.pipeline import Overloaded, RequestTooLarge, WorkerFailed
from app.schemas import PredictResponse, error_responses
from app.service import Service, not_ready
from model_store.errors import ModelStoreError

router = APIRouter(prefix="/v1", tags=["predict"])
PATH = "/v1/predict"


async def serve_predict(request: Request, loaded: Loaded, service: Service) -> Response:
    settings, metrics, pipeline = service.settings, service.metrics, service.host.pipeline
    station = station_of(request.headers.get(STATION_HEADER))
    retry = {"Retry-After": str(settings.retry_after_s)}
    try:
        pipeline.refuse_if_full()  # before reading a byte of the body: shedding must be cheap
    except Overloaded as exc:
        metrics.shed.labels("overloaded").inc()
        raise APIError(503, "overloaded", f"{exc}; retry shortly", retry) from None
    # The body's bytes count against the budget of all requests until this one is answered.
    with service.bodies.hold() as hold:
        try:
            images = await read_images(request, service.body_limits, hold)
        except APIError as exc:
            if exc.status == 503:
                metrics.shed.labels("bodies_in_flight").inc()
            raise
        checked = await pipeline.inspect(loaded.version, images)  # header checks before anything is queued
        try:
            scores = await pipeline.predict(loaded.version, checked)
        except Overloaded as exc:
            metrics.shed.labels("overloaded").inc()
            raise APIError(503, "overloaded", f"{exc}; retry shortly", retry) from None
        except RequestTooLarge as exc:
            metrics.shed.labels("request_too_large").inc()
            raise APIError(413, "request_too_large", f"{exc}; send fewer or smaller images per request") from None
        except WorkerFailed as exc:
            raise APIError(503, "worker_restarting", f"{exc}; retry shortly", retry) from None
    service.monitor.record(loaded, station, checked, scores)
    threshold = loaded.threshold
    results = []
    for i, ((name, _), s) in enumerate(zip(images, scores, strict=True)):
        metrics.images.labels(s.decision).inc()
        results.append(
            {
                "index": i,
                "filename": None if name == "image" else name,
                "probability": s.probability,
                "decision": s.decision,
                "threshold": threshold,
            }
        )
    # Built directly (the response model documents it): no per-request validation pass.
    response = JSONLines(
        {
            "request_id": request.state.request_id,
            "model": {"name": loaded.name, "version": loaded.version, "manifest_sha256": loaded.manifest_sha256},
            "results": results,
        }
    )
    # Shadow scoring and capture run once the response is sent, never before it.
    after = [service.host.shadow_job(loaded, checked, scores)]
    if service.capture is not None:
        after.append(service.capture.job(request.state.request_id, station, loaded, checked, scores))
    jobs = [job for job in after if job is not None]
    if jobs:
        response.background = BackgroundTasks()
        for job in jobs:
            response.background.add_task(job)
    return response


_BINARY = {"type": "string", "format": "binary"}
# The route reads its body itself (streamed, bounded), so FastAPI cannot infer it: declared
# here, so /docs can send an image and clients can be generated from the document.
_REQUEST_BODY = {
    "required": True,
    "description": "one image as the raw body, or several as multipart `files` fields",
    "content": {
        **{f"image/{kind}": {"schema": _BINARY} for kind in ("jpeg", "png", "webp")},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"files": {"type": "array", "items": _BINARY, "minItems": 1}},
                "required": ["files"],
            }
        },
    },
}


@router.post(
    PATH.removeprefix("/v1"),
    response_model=PredictResponse,
    responses=error_responses(408, 413, 415, 422, 503),
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def predict(request: Request, loaded: PinnedDep, service: ServiceDep) -> Response:
    """Probability and decision per image; the model (name, version, manifest digest) once."""
    return await serve_predict(request, loaded, service)


@dataclass(frozen=True)
class _Route:
    path: str


_ROUTE = _Route(PATH)


class PredictFastPath:
    """ASGI middleware: `POST /v1/predict` straight to `serve_predict`; anything else passes on."""

    def __init__(self, app: ASGIApp, fastapi: FastAPI) -> None:
        self.app = app
        self.fastapi = fastapi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = _ROUTE  # metrics and logs label it as the framework would
        service: Service = self.fastapi.state.service
        request = Request(scope, receive)
        try:
            loaded = service.host.pin()
        except NotReady as exc:
            await not_ready(exc)(scope, receive, send)
            return
        scope["state"]["version"] = loaded.version
        try:
            response = await serve_predict(request, loaded, service)
        except (APIError, ModelStoreError) as exc:
            response = response_for(exc)
        finally:
            service.host.unpin(loaded)
        await response(scope, receive, send)
