"""Response bodies, and the error statuses each route declares in the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field

from model_store.manifest import VERSION_PATTERN
from model_store.parity import ParityReport
from model_store.store.base import AuditEntry

# A version name as the store allows it, declared in the document so that clients (and
# schemathesis) know a name outside it is invalid; one pattern, the store's.
_VERSION_DOC = "a version name: 1-64 of A-Z a-z 0-9 . _ -, starting alphanumeric"
VersionPath = Annotated[str, Path(pattern=VERSION_PATTERN, description=_VERSION_DOC)]
VersionQuery = Annotated[str | None, Query(pattern=VERSION_PATTERN, description=_VERSION_DOC)]


class ModelRef(BaseModel):
    name: str
    version: str
    manifest_sha256: str


class ImageResult(BaseModel):
    index: int
    filename: str | None
    probability: float  # P(positive label)
    decision: str = Field(
        description="the positive or negative label at the threshold, or `retake`: the image is outside "
        "the ranges the model was validated on (dark, blank, blurred, odd shape), so it is not judged"
    )
    threshold: float
    reason: str | None = Field(None, description="why the decision is `retake`; absent otherwise")
    receipt: str | None = Field(
        None,
        description="with receipts on (APP_RECEIPT_KEY): a JWS (ES256) signed by the service over this image's "
        "sha256, probability, decision, threshold, the model and the request; keys at GET /v1/receipts/keys; "
        "`python -m model_store receipt verify` / `replay` check it",
    )


class PredictResponse(BaseModel):
    request_id: str = Field(
        description="the service's own id for this request (random, also in X-Request-ID); "
        "it names the request's capture for POST /v1/feedback"
    )
    model: ModelRef
    results: list[ImageResult]


class ImageSize(BaseModel):
    width: int
    height: int


class SeenBox(BaseModel):
    """Where the model's input (the centre crop of the resized image) lies in the image, in its pixels."""

    left: float
    top: float
    right: float
    bottom: float


class ExplainResponse(BaseModel):
    request_id: str = Field(description="the service's own id for this request (random, also in X-Request-ID)")
    model: ModelRef
    filename: str | None = Field(description="the multipart part's name; null for a raw image body")
    probability: float = Field(description="P(positive label): what /v1/predict answers for this image, bit for bit")
    decision: str = Field(description="predict's decision: the label at the threshold, or `retake`")
    threshold: float
    reason: str | None = Field(None, description="why the decision is `retake`; absent otherwise")
    method: str = Field(description="how the heatmap was made: `occlusion` (docs/explanations.md)")
    image: ImageSize = Field(description="the image as sent, after its EXIF orientation, in pixels")
    seen: SeenBox = Field(description="the part of the image the model sees; the rest is cropped away")
    grid: list[list[float | None]] = Field(
        description="where the evidence for the positive label lies: rows top to bottom over the whole image "
        "(8 cells along its longer side, about square), each the mean heat of the part of the cell the model "
        "sees, scaled so the hottest cell is 1 (relative to this image, whatever its probability); null for a "
        "cell wholly outside `seen`"
    )
    overlay_png: str = Field(
        description="base64 PNG: the image (at most 512 pixels on its longer side) with the heat drawn over it, "
        "red to yellow; what the model never sees is darkened"
    )


class ParityImage(BaseModel):
    file: str
    expected_probability: float
    actual_probability: float
    abs_diff: float
    expected_decision: str
    actual_decision: str
    passed: bool


class ParityResponse(BaseModel):
    version: str
    passed: bool
    max_abs_diff: float
    tolerance: float
    threshold: float
    images: list[ParityImage]

    @classmethod
    def of(cls, report: ParityReport) -> ParityResponse:
        return cls(
            version=report.version,
            passed=report.passed,
            max_abs_diff=report.max_abs_diff,
            tolerance=report.tolerance,
            threshold=report.threshold,
            images=[
                ParityImage(
                    file=c.file,
                    expected_probability=c.expected_probability,
                    actual_probability=c.actual_probability,
                    abs_diff=c.abs_diff,
                    expected_decision=c.expected_decision,
                    actual_decision=c.actual_decision,
                    passed=c.passed,
                )
                for c in report.checks
            ],
        )


class VersionOut(BaseModel):
    version: str
    name: str
    created_at: str
    manifest_sha256: str
    active: bool
    served: bool


class VersionsResponse(BaseModel):
    active: str | None
    served: str | None
    versions: list[VersionOut]


class SwapResponse(BaseModel):
    active: str
    previous: str | None
    audit_seq: int
    parity: ParityResponse


class UploadResponse(BaseModel):
    version: str
    created: bool


class AuditOut(BaseModel):
    seq: int
    time: str
    actor: str
    action: str
    from_version: str | None
    to_version: str | None
    reason: str
    evidence: dict[str, Any] | None = Field(
        None, description="what the decision rested on (a canary's end or promotion, a policy change); else null"
    )

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditOut:
        return cls(**entry.shown().to_dict())  # escaped: clients print it


class ErrorBody(BaseModel):
    """Every refusal: a stable code to branch on and a sentence for a person. Some carry
    more (a failed parity check also has the report's fields)."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="stable, machine-readable code, e.g. not_an_image")
    message: str = Field(description="what was wrong, for a person")


# What each status means on this API, as /docs shows it next to every route that can answer it.
_ERROR_MEANING = {
    400: "malformed request: not HTTP, or a JSON body that is not UTF-8 (`bad_request`)",
    401: "missing or wrong bearer token (`unauthorized`)",
    403: "management is off: no token configured (`management_disabled`)",
    404: "no such version, no such captured request for this station, or receipts are off (`receipts_off`)",
    408: "the request body did not arrive in time (`request_timeout`)",
    409: "conflict with the store's state (`parity_failed`, `version_conflict`, `nothing_to_roll_back`)",
    413: "too large: the body, one image or the number of images",
    415: "unsupported content type",
    422: "the body or a parameter is invalid (not an image, truncated, too many pixels, unsafe archive...)",
    429: "too many wrong tokens from this address; retry after `Retry-After` seconds (`too_many_token_failures`)",
    503: "not ready, overloaded or the store is unreachable; retry after `Retry-After` seconds",
    507: "the capture store is full (`capture_full`)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with the `ErrorBody` schema. A route that checks
    a token (401) also slows down wrong ones (429, `app.edge.deps.TokenFailures`)."""
    if 401 in statuses:
        statuses = (*statuses, 429)
    return {status: {"model": ErrorBody, "description": _ERROR_MEANING[status]} for status in statuses}
