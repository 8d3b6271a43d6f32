"""The Open Inference Protocol v2 (KServe, Triton): health, metadata and inference, so that
KServe and any Triton client can use the service with no code of ours.

`{model}` is the manifest's `name`, and the one version is the served one. An inference
request is read (`app.edge.intake.read_body`, within the byte budget) and decoded
(`app.edge.oip`) by this door; everything between is `app.edge.serve`'s, as for /v1, so
admission, batching, limits, metrics, drift and capture are the same. Errors have the
protocol's shape, `{"error": "<code>: <message>"}` (`app.edge.errors.is_oip`). Inference
requests are answered by `PredictFastPath` (`app.edge.routes.predict`) before routing, as
`/v1/predict` is; the routes below declare them in the API document.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from app.edge import oip
from app.edge.deps import ServiceDep
from app.edge.errors import APIError, JSONLines
from app.edge.intake import read_body
from app.edge.routes.health import not_ready_reason
from app.edge.serve import prediction, refused_body
from app.ops.model_host import Loaded, NotReady
from app.service import Service

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])


class OIPError(BaseModel):
    """A refusal as the protocol's clients read it."""

    error: str


_MEANING = {
    400: "not a valid inference request (the message says what); BYTES must be sent as binary data",
    404: "no such model, or not the served version (the message names the served one)",
    408: "the request body did not arrive in time",
    413: "too large: the body (also once decompressed), one image, or the number of images",
    415: "unsupported content encoding",
    422: "an image is invalid (not an image, truncated, too many pixels...)",
    503: "not ready, overloaded or restarting; retry after `Retry-After` seconds",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": OIPError, "description": _MEANING[s]} for s in statuses}


def _served(service: Service, model: str, version: str | None = None) -> Loaded:
    loaded = service.host.current
    if loaded is None:
        raise NotReady(service.host.reason)
    _check(loaded, model, version)
    return loaded


def _check(loaded: Loaded, model: str, version: str | None) -> None:
    if model != loaded.name:
        raise APIError(404, "model_not_found", f"no model {model[:100]!r}; this service serves {loaded.name!r}")
    if version is not None and version != loaded.version:
        served = f"the served version is {loaded.version!r}"
        raise APIError(404, "version_not_found", f"version {version[:100]!r} is not served; {served}")


@router.get("")
async def server_metadata() -> dict[str, Any]:
    """Server name, version and the protocol extensions it supports."""
    return {"name": "parcel-damage-detection", "version": "2", "extensions": oip.EXTENSIONS}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    """The process answers."""
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "not ready", "model": dict[str, Any]}})
async def ready(service: ServiceDep) -> Response:
    """200 once a verified model is served and a worker answers (as /readyz); 503 otherwise."""
    reason = not_ready_reason(service)
    if reason is not None:
        return JSONLines({"ready": False, "reason": reason}, status_code=503, headers={"Retry-After": "5"})
    return JSONLines({"ready": True})


def _outputs(service: Service) -> dict[str, str]:
    """The outputs this service answers (name: datatype): a receipt per image when they are on."""
    return oip.OUTPUTS if service.receipts is None else oip.WITH_RECEIPTS


def _metadata(loaded: Loaded, outputs: dict[str, str]) -> dict[str, Any]:
    return {
        "name": loaded.name,
        "versions": [loaded.version],
        "platform": f"pytorch_{loaded.manifest.model.architecture}",
        "inputs": [{"name": oip.INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": name, "datatype": dtype, "shape": [-1]} for name, dtype in outputs.items()],
        "parameters": {"manifest_sha256": loaded.manifest_sha256, "threshold": loaded.threshold},
    }


@router.get("/models/{model}", responses=_errors(404, 503))
async def model_metadata(model: str, service: ServiceDep) -> dict[str, Any]:
    """The model's name, served version, input and outputs."""
    return _metadata(_served(service, model), _outputs(service))


@router.get("/models/{model}/versions/{version}", responses=_errors(404, 503))
async def version_metadata(model: str, version: str, service: ServiceDep) -> dict[str, Any]:
    """As `/v2/models/{model}`, for the served version only."""
    return _metadata(_served(service, model, version), _outputs(service))


async def _ready(service: Service, model: str, version: str | None) -> Response:
    _served(service, model, version)
    reason = not_ready_reason(service)
    if reason is not None:
        body = {"name": model, "ready": False, "reason": reason}
        return JSONLines(body, status_code=503, headers={"Retry-After": "5"})
    return JSONLines({"name": model, "ready": True})


@router.get("/models/{model}/ready", responses=_errors(404, 503))
async def model_ready(model: str, service: ServiceDep) -> Response:
    """200 when the model is served and a worker answers."""
    return await _ready(service, model, None)


@router.get("/models/{model}/versions/{version}/ready", responses=_errors(404, 503))
async def version_ready(model: str, version: str, service: ServiceDep) -> Response:
    """As `/v2/models/{model}/ready`, for the served version only."""
    return await _ready(service, model, version)


_INFER_BODY = {
    "required": True,
    "description": "the inference request header (JSON), then, after `Inference-Header-Content-Length` "
    "bytes, the binary data: input `image`, BYTES, shape [N], each element a 4-byte little-endian "
    "length and an encoded image (JPEG, PNG or WebP); gzip or deflate with Content-Encoding",
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {"schema": {"type": "object"}},
    },
}
_INFER = {
    "responses": {
        200: {
            "description": "outputs `probability` (FP32 [N]), `decision` (BYTES [N]: the label, or `retake`), "
            "`reason` (BYTES [N]: why a retake, else empty), and with receipts on `receipt` (BYTES [N], a signed "
            "JWS per image), as JSON or binary data; "
            "`parameters`: version, manifest_sha256, threshold, request_id",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **_errors(400, 404, 408, 413, 415, 422, 503),
    },
    "openapi_extra": {"requestBody": _INFER_BODY},
}


async def serve_infer(request: Request, service: Service, model: str, version: str | None) -> Response:
    """The whole of the protocol's infer (`PredictFastPath` runs it without routing)."""
    async with prediction(request, service) as p:
        _check(p.loaded, model, version)
        limits = service.body_limits
        try:
            raw = await read_body(request, limits.max_request_bytes, "inference request", limits.timeout_s, p.hold)
            encoding = request.headers.get("content-encoding")
            # Inflating costs CPU in proportion to the limit: off the event loop.
            body = await asyncio.to_thread(oip.decompress, raw, encoding, limits.max_request_bytes)
            if body is not raw:
                p.hold.take(len(body))  # the inflated copy is held in memory too
        except APIError as exc:
            raise refused_body(exc, service) from None
        infer = oip.parse_request(body, request.headers.get(oip.HEADER_LENGTH), limits, _outputs(service))
        if infer.timeout_ms is not None:
            p.set_budget_ms(infer.timeout_ms)  # the protocol's own budget, still from the arrival
        del raw, body
        scores = await p.score([(f"image[{i}]", image) for i, image in enumerate(infer.images)])
        loaded = p.loaded
        header: dict[str, Any] = {"model_name": loaded.name, "model_version": loaded.version}
        if infer.id is not None:
            header["id"] = infer.id
        header["parameters"] = {
            "version": loaded.version,
            "manifest_sha256": loaded.manifest_sha256,
            "threshold": loaded.threshold,
            "request_id": p.request_id,
        }
        columns: dict[str, list[Any]] = {
            "probability": [s.probability for s in scores],
            "decision": [s.decision for s in scores],
            "reason": [s.reason or "" for s in scores],
        }
        if oip.RECEIPT in infer.outputs:  # signed only when asked for
            columns[oip.RECEIPT] = p.receipts() or []  # available only with receipts on
        content, header_length = oip.response_body(header, infer.outputs, columns)
        response: Response
        if header_length is None:
            response = JSONLines(content)
        else:
            assert isinstance(content, bytes)
            response = Response(
                content, media_type="application/octet-stream", headers={oip.HEADER_LENGTH: str(header_length)}
            )
        response.background = p.after()
        return response


@router.post("/models/{model}/infer", **_INFER)  # type: ignore[arg-type]
async def infer(model: str, request: Request, service: ServiceDep) -> Response:
    """Score a batch of encoded images: probability and decision per image."""
    # `PredictFastPath` answers first; here only a path the router matches and its pattern
    # does not (Starlette's `$` matches before a final newline: `/infer%0A`), still served.
    return await serve_infer(request, service, model, None)


@router.post("/models/{model}/versions/{version}/infer", **_INFER)  # type: ignore[arg-type]
async def version_infer(model: str, version: str, request: Request, service: ServiceDep) -> Response:
    """As `/v2/models/{model}/infer`, for the served version only."""
    return await serve_infer(request, service, model, version)  # as `infer`, when the middleware did not match
