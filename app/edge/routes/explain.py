"""POST /v1/explain: one image's served probability and decision, and where the evidence for
the positive label lies (a heatmap as a grid over the image, and a PNG overlay).

The same steps as predict (`app.edge.serve`: the station or management token where tokens
are required, the deadline, admission before the body, the body budget) and the same body
forms, for one image. The explanation runs in an inference worker with the served
`Predictor` (`model_store.explain`), bounded apart from predict (`APP_MAX_EXPLAINS`, and never
while station images wait): an inspector's look at a flagged parcel, not station traffic,
so it is not recorded in drift, capture or shadow.
"""

from __future__ import annotations

import base64
import dataclasses

from fastapi import APIRouter, Request, Response

from app.edge.errors import APIError, JSONLines
from app.edge.intake import read_images
from app.edge.routes.predict import image_body_doc
from app.edge.schemas import ExplainResponse, error_responses
from app.edge.serve import prediction, refused_body

router = APIRouter(prefix="/v1", tags=["predict"])


@router.post(
    "/explain",
    response_model=ExplainResponse,
    responses=error_responses(401, 408, 413, 415, 422, 503),
    openapi_extra={"requestBody": image_body_doc("one image: the raw body, or one multipart `files` field", most=1)},
)
async def explain(request: Request) -> Response:
    """The served probability and decision of one image, and a heatmap of where its evidence lies."""
    service = request.app.state.service
    async with prediction(request, service) as p:
        limits = dataclasses.replace(service.body_limits, max_images=1)  # refused at the second part's headers
        try:
            [(name, data)] = await read_images(request, limits, p.hold)
        except APIError as exc:
            if exc.code == "too_many_images":  # not a size limit here: the operation takes one image
                raise APIError(422, "one_image_only", "explain takes one image; send several to /v1/predict") from None
            raise refused_body(exc, service) from None
        e = await p.explain((name, data))
        loaded = p.loaded
        body = {
            "request_id": p.request_id,
            "model": {"name": loaded.name, "version": loaded.version, "manifest_sha256": loaded.manifest_sha256},
            "filename": None if name == "image" else name,
            "probability": e.probability,
            "decision": e.decision,
            "threshold": loaded.threshold,
            **({"reason": e.reason} if e.reason is not None else {}),
            "method": e.method,
            "image": {"width": e.width, "height": e.height},
            "seen": dict(zip(("left", "top", "right", "bottom"), e.seen, strict=True)),
            "grid": e.grid,
            "overlay_png": base64.b64encode(e.overlay_png).decode("ascii"),
        }
        return JSONLines(body)
