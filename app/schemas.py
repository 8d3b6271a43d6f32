"""Response bodies."""

from __future__ import annotations

from pydantic import BaseModel

from model_store.parity import ParityReport
from model_store.store.base import AuditEntry


class ModelRef(BaseModel):
    name: str
    version: str
    manifest_sha256: str


class ImageResult(BaseModel):
    index: int
    filename: str | None
    probability: float  # P(positive label)
    decision: str
    threshold: float


class PredictResponse(BaseModel):
    request_id: str
    model: ModelRef
    results: list[ImageResult]


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

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditOut:
        return cls(**entry.to_dict())
