"""POST /v1/predict: one raw image body, or several multipart `files`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.deps import HostDep, MetricsDep, PinnedDep, SettingsDep
from app.errors import APIError, JSONLines
from app.intake import BodyLimits, read_images
from app.pipeline import Overloaded, RequestTooLarge, WorkerFailed
from app.schemas import PredictResponse
from model_store.errors import ImageError
from model_store.preprocessing import ImageInfo

router = APIRouter(prefix="/v1", tags=["predict"])


@router.post("/predict", response_model=PredictResponse)
async def predict(
    request: Request, loaded: PinnedDep, host: HostDep, settings: SettingsDep, metrics: MetricsDep
) -> Response:
    limits = BodyLimits(settings.max_image_bytes, settings.max_images_per_request, settings.max_request_bytes)
    images = await read_images(request, limits)
    pipeline = host.pipeline
    checked: list[tuple[str, bytes, ImageInfo]] = []
    for name, data in images:  # header checks (~30 µs each) before anything is queued
        try:
            checked.append((name, data, pipeline.inspect(loaded.version, data)))
        except ImageError as exc:
            raise type(exc)(f"{name}: {exc}") from None
    retry = {"Retry-After": str(settings.retry_after_s)}
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
    threshold = loaded.threshold
    results = []
    for i, ((name, _), s) in enumerate(zip(images, scores, strict=True)):
        metrics.images.labels(s.decision).inc()
        filename = None if name == "image" else name
        results.append(
            {
                "index": i,
                "filename": filename,
                "probability": s.probability,
                "decision": s.decision,
                "threshold": threshold,
            }
        )
    # Built directly (the response model documents it): no per-request validation pass.
    return JSONLines(
        {
            "request_id": request.state.request_id,
            "model": {"name": loaded.name, "version": loaded.version, "manifest_sha256": loaded.manifest_sha256},
            "results": results,
        }
    )
