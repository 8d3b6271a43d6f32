"""POST /v1/predict: one raw image body, or several multipart `files`.

The predict path, as named steps (each in one place):

1. **pin**: the served version, kept loaded until the answer (`ModelHost.pinned`);
2. **admit**: shed at once when the queue is full, before a byte of the body is read;
3. **read**: the body, streamed and bounded, counted in the byte budget (`app.edge.intake`);
4. **check**: every image's header, bounded work, in the inspect threads (`Pipeline.inspect`);
5. **score**: queue, batch, decode and forward in a worker, decide (`Pipeline.predict`);
6. **record**: drift windows, metrics;
7. **answer**: one JSON body (`PredictResponse` documents it); shadow scoring and capture
   run after it is sent.

`serve_predict` is all of it. `PredictFastPath` (middleware) is the one way in at run time:
it calls `serve_predict` without the framework's routing, dependency solving and exception
layers, which cost the front process about a fifth of its time per request on the hottest
path (docs/performance.md). The FastAPI route below only declares the operation in the API
document (the middleware answers every `POST /v1/predict` before routing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.background import BackgroundTasks
from starlette.types import ASGIApp, Receive, Scope, Send

from app.edge.errors import APIError, JSONLines, response_for
from app.edge.intake import read_images
from app.edge.schemas import PredictResponse, error_responses
from app.edge.stations import STATION_HEADER, station_of
from app.ops.model_host import Loaded, NotReady
from app.service import Service
from app.serving.pipeline import Overloaded, RequestTooLarge, Scored, WorkerFailed
from model_store.errors import ModelStoreError

router = APIRouter(prefix="/v1", tags=["predict"])
PATH = "/v1/predict"


async def serve_predict(request: Request, service: Service) -> Response:
    """The whole of `POST /v1/predict`: pin, admit, read, check, score, record, answer."""
    settings, metrics, host = service.settings, service.metrics, service.host
    pipeline = host.pipeline
    station = station_of(request.headers.get(STATION_HEADER))
    retry = {"Retry-After": str(settings.retry_after_s)}
    with host.pinned() as loaded:
        request.state.version = loaded.version
        try:
            pipeline.refuse_if_full()
        except Overloaded as exc:
            metrics.shed.labels("overloaded").inc()
            raise APIError(503, "overloaded", f"{exc}; retry shortly", retry) from None
        with service.bodies.hold() as hold:
            try:
                images = await read_images(request, service.body_limits, hold)
            except APIError as exc:
                if exc.status == 503:
                    metrics.shed.labels("bodies_in_flight").inc()
                raise
            checked = await pipeline.inspect(loaded.version, images)
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
        for s in scores:
            metrics.images.labels(s.decision).inc()
        response = JSONLines(predict_body(request.state.request_id, loaded, [name for name, _ in images], scores))
        # Shadow scoring and capture run once the response is sent, never before it.
        after = [host.shadow_job(loaded, checked, scores)]
        if service.capture is not None:
            after.append(service.capture.job(request.state.request_id, station, loaded, checked, scores))
        jobs = [job for job in after if job is not None]
        if jobs:
            response.background = BackgroundTasks()
            for job in jobs:
                response.background.add_task(job)
        return response


def predict_body(request_id: str, loaded: Loaded, names: Sequence[str], scores: Sequence[Scored]) -> dict[str, Any]:
    """The answer, in the shape `PredictResponse` documents, built directly: no validation
    pass per request (schemathesis checks every answer against the document)."""
    threshold = loaded.threshold
    return {
        "request_id": request_id,
        "model": {"name": loaded.name, "version": loaded.version, "manifest_sha256": loaded.manifest_sha256},
        "results": [
            {
                "index": i,
                "filename": None if name == "image" else name,
                "probability": s.probability,
                "decision": s.decision,
                "threshold": threshold,
            }
            for i, (name, s) in enumerate(zip(names, scores, strict=True))
        ],
    }


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
async def predict(request: Request) -> Response:
    """Probability and decision per image; the model (name, version, manifest digest) once."""
    raise AssertionError("PredictFastPath answers POST /v1/predict before routing")  # pragma: no cover


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
        try:
            response = await serve_predict(Request(scope, receive), self.fastapi.state.service)
        except (APIError, ModelStoreError, NotReady) as exc:
            response = response_for(exc)
        await response(scope, receive, send)
