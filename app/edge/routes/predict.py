"""POST /v1/predict: one raw image body, or several multipart `files`.

The steps every front door shares (pin, admit, check, score, record, after) are in
`app.edge.serve`; this module reads this door's body (`app.edge.intake.read_images`) and
writes its answer (`predict_body`, documented by `PredictResponse`).

`PredictFastPath` (middleware) is the one way in at run time for both predict doors (this
one and the protocol's infer, `app.edge.routes.v2.serve_infer`): it calls them without the
framework's routing, dependency solving and exception layers, which cost the front process
about a fifth of its time per request on the hottest path (docs/performance.md). Under
uvicorn the HTTP protocol runs it (inside `RequestObserver`) as the app's door
(`app.edge.server.FRONT_DOORS`), past the framework's outer layers too. The FastAPI routes
declare the operations in the API document; they serve only what the router matches and the
middleware's pattern does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.edge.errors import APIError, JSONLines, response_for
from app.edge.intake import read_images
from app.edge.routes import v2
from app.edge.schemas import PredictResponse, error_responses
from app.edge.serve import PREDICT_PATHS, prediction, refused_body
from app.ops.model_host import Loaded, NotReady
from app.service import Service
from app.serving.pipeline import Scored
from model_store.errors import ModelStoreError

router = APIRouter(prefix="/v1", tags=["predict"])
PATH = "/v1/predict"


async def serve_predict(request: Request, service: Service) -> Response:
    """The whole of `POST /v1/predict`: the steps of `app.edge.serve` around this door's
    body format (a raw image, or multipart `files`) and answer."""
    async with prediction(request, service) as p:
        try:
            images = await read_images(request, service.body_limits, p.hold)
        except APIError as exc:
            raise refused_body(exc, service) from None
        scores = await p.score(images)
        names = [name for name, _ in images]
        response = JSONLines(predict_body(p.request_id, p.loaded, names, scores, p.receipts()))
        response.background = p.after()
        return response


def predict_body(
    request_id: str,
    loaded: Loaded,
    names: Sequence[str],
    scores: Sequence[Scored],
    receipts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The answer, in the shape `PredictResponse` documents, built directly: no validation
    pass per request (schemathesis checks every answer against the document)."""
    threshold = loaded.threshold
    results: list[dict[str, Any]] = []
    for i, (name, s) in enumerate(zip(names, scores, strict=True)):
        result = {
            "index": i,
            "filename": None if name == "image" else name,
            "probability": s.probability,
            "decision": s.decision,
            "threshold": threshold,
        }
        if s.reason is not None:  # a retake says why
            result["reason"] = s.reason
        results.append(result)
    if receipts is not None:
        for result, receipt in zip(results, receipts, strict=True):
            result["receipt"] = receipt
    return {
        "request_id": request_id,
        "model": {"name": loaded.name, "version": loaded.version, "manifest_sha256": loaded.manifest_sha256},
        "results": results,
    }


_BINARY = {"type": "string", "format": "binary"}


def image_body_doc(description: str, *, most: int | None = None) -> dict[str, Any]:
    """The OpenAPI `requestBody` of a route that reads images with `read_images`: it reads its
    body itself (streamed, bounded), so FastAPI cannot infer it; declared, so /docs can send an
    image and clients can be generated from the document. `most`: images per request."""
    files: dict[str, Any] = {"type": "array", "items": _BINARY, "minItems": 1}
    if most is not None:
        files["maxItems"] = most
    return {
        "required": True,
        "description": description,
        "content": {
            **{f"image/{kind}": {"schema": _BINARY} for kind in ("jpeg", "png", "webp")},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"files": files}, "required": ["files"]}
            },
        },
    }


@router.post(
    PATH.removeprefix("/v1"),
    response_model=PredictResponse,
    responses=error_responses(408, 413, 415, 422, 503),
    openapi_extra={"requestBody": image_body_doc("one image as the raw body, or several as multipart `files` fields")},
)
async def predict(request: Request) -> Response:
    """Probability and decision per image; the model (name, version, manifest digest) once."""
    # `PredictFastPath` answers first; here only a path the router matches and its pattern
    # does not (Starlette's `$` matches before a final newline: `/v1/predict%0A`), still served.
    return await serve_predict(request, request.app.state.service)


@dataclass(frozen=True)
class _Route:
    path: str


# Metrics and logs label a request by its route's path, as the framework would.
_ROUTE = _Route(PATH)
_INFER_ROUTE = _Route("/v2/models/{model}/infer")
_VERSION_INFER_ROUTE = _Route("/v2/models/{model}/versions/{version}/infer")


class PredictFastPath:
    """ASGI middleware: the predict doors (`POST /v1/predict` to `serve_predict`, the
    protocol's infer to `v2.serve_infer`, `app.edge.serve.PREDICT_PATHS`) without routing;
    anything else passes on. Refusals in each door's own shape."""

    def __init__(self, app: ASGIApp, fastapi: FastAPI) -> None:
        self.app = app
        self.fastapi = fastapi

    @staticmethod
    def handles(method: str, path: str) -> bool:
        return method == "POST" and PREDICT_PATHS.fullmatch(path) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        door = PREDICT_PATHS.fullmatch(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if door is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.fastapi  # as the framework sets it (`Request.app`), when the protocol's door skips it
        service: Service = self.fastapi.state.service
        model, version = door["model"], door["version"]
        try:
            if model is None:
                scope["route"] = _ROUTE
                response = await serve_predict(Request(scope, receive), service)
            else:
                scope["route"] = _INFER_ROUTE if version is None else _VERSION_INFER_ROUTE
                response = await v2.serve_infer(Request(scope, receive), service, model, version)
        except (APIError, ModelStoreError, NotReady) as exc:
            response = response_for(exc, oip=model is not None)
        await response(scope, receive, send)
