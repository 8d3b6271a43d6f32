"""POST /v1/predict: one raw image body, or several multipart `files`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.datastructures import FormData

from app.batcher import Overloaded
from app.deps import HostDep, LoadedDep, MetricsDep, SettingsDep
from app.errors import APIError
from app.schemas import ImageResult, ModelRef, PredictResponse
from app.settings import Settings

router = APIRouter(prefix="/v1", tags=["predict"])


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refusing more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, "payload_too_large", f"{what} is {declared} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, "payload_too_large", f"{what} exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_images(request: Request, settings: Settings) -> list[tuple[str, bytes]]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype.startswith("image/"):
        return [("image", await read_body(request, settings.max_image_bytes, "image"))]
    if ctype != "multipart/form-data":
        raise APIError(
            415,
            "unsupported_media_type",
            f"content type {ctype or '(none)'!r}: send one image as image/jpeg, image/png or image/webp, "
            "or several as multipart/form-data fields named 'files'",
        )
    n = settings.max_images_per_request
    # Read (and bound) the body ourselves; Starlette's form parser then reuses the cached body.
    request._body = await read_body(request, n * settings.max_image_bytes + 64 * 1024, "multipart body")
    try:
        form = await request.form(max_files=n + 1, max_fields=n + 16)
    except Exception as exc:  # python-multipart's parse errors and starlette's limits
        raise APIError(422, "invalid_multipart", f"multipart body could not be parsed: {exc}") from None
    try:
        return await _images_from_form(form, settings)
    finally:
        await form.close()  # spooled temp files, on every path


async def _images_from_form(form: FormData, settings: Settings) -> list[tuple[str, bytes]]:
    n = settings.max_images_per_request
    files = form.getlist("files")
    if not files:
        raise APIError(422, "no_images", "multipart body has no 'files' fields")
    if len(files) > n:
        raise APIError(413, "too_many_images", f"{len(files)} images in one request; the limit is {n}")
    images = []
    for i, f in enumerate(files):
        if isinstance(f, str):
            raise APIError(422, "not_a_file", f"files[{i}] is a text field, not a file")
        data = await f.read()
        name = f"files[{i}]" + (f" ({f.filename})" if f.filename else "")
        if len(data) > settings.max_image_bytes:
            raise APIError(
                413, "image_too_large", f"{name} is {len(data)} bytes; the limit is {settings.max_image_bytes}"
            )
        images.append((name, data))
    return images


@router.post("/predict", response_model=PredictResponse)
async def predict(
    request: Request, loaded: LoadedDep, host: HostDep, settings: SettingsDep, metrics: MetricsDep
) -> PredictResponse:
    images = await read_images(request, settings)
    if host.batcher.queued_images + len(images) > settings.queue_bound:  # shed load before decoding
        raise APIError(
            503, "overloaded", "too many images queued; retry shortly", {"Retry-After": str(settings.retry_after_s)}
        )
    try:
        probs = await host.probabilities(loaded.predictor, images)
    except Overloaded as exc:
        raise APIError(
            503, "overloaded", f"{exc}; retry shortly", {"Retry-After": str(settings.retry_after_s)}
        ) from None
    predictor = loaded.predictor
    results = []
    for i, ((name, _), p) in enumerate(zip(images, probs, strict=True)):
        decision = predictor.decide(p)
        metrics.images.labels(decision).inc()
        filename = None if name == "image" else name
        results.append(
            ImageResult(index=i, filename=filename, probability=p, decision=decision, threshold=predictor.threshold)
        )
    return PredictResponse(
        request_id=request.state.request_id,
        model=ModelRef(name=loaded.name, version=loaded.version, manifest_sha256=loaded.manifest_sha256),
        results=results,
    )
