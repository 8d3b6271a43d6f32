"""`manifest.json`: the bundle's contract.

Everything needed to rebuild the model, its preprocessing and its decision rule with no
code from the training run. Unknown keys are refused so a typo never silently means
"use the default".

Schema versions: 2 is written today; 1 (the first release) is still read and served
exactly as it says. Fields that version 2 added have defaults that reproduce version 1's
behaviour, and a version 1 manifest may not set them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model_store.errors import ManifestInvalid, describe_validation_errors

SCHEMA_VERSION: Literal[2] = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_REFERENCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Architecture = Literal["mobilenet_v3_small", "resnet18", "efficientnet_b0"]
Interpolation = Literal["nearest", "bilinear", "bicubic"]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    architecture: Architecture
    num_outputs: Literal[1] = 1  # one logit: P(positive) = sigmoid(logit)
    kwargs: dict[str, float | int | bool | str] = Field(default_factory=dict)


class PreprocessingSpec(_Strict):
    """How image bytes become the model's input tensor; rebuilt with no code."""

    color_mode: Literal["RGB"] = "RGB"
    exif_orientation: bool = True  # apply the camera's EXIF rotation before anything else
    resize: int = Field(gt=0, description="shorter side after resize, in pixels")
    crop: int = Field(gt=0, description="square centre crop, in pixels")
    interpolation: Interpolation = "bilinear"
    antialias: bool = True
    # Schema 2. Decode JPEGs at the smallest DCT scale (1/2, 1/4 or 1/8, done inside
    # libjpeg-turbo) whose shorter side is still at least `resize`, then resize as usual.
    # About 3x less decode and resize work for camera photos; training and serving both
    # decode this way through the one Preprocessor, so parity stays exact.
    jpeg_dct_scaling: bool = False
    mean: tuple[float, float, float]
    std: tuple[Annotated[float, Field(gt=0)], ...]

    @field_validator("std")
    @classmethod
    def _three_channels(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if len(v) != 3:
            raise ValueError("std needs one value per RGB channel")
        return v

    @field_validator("crop")
    @classmethod
    def _crop_fits(cls, v: int, info: Any) -> int:
        resize = info.data.get("resize")
        if resize is not None and v > resize:
            raise ValueError(f"crop {v} is larger than resize {resize}")
        return v


class RuntimeSpec(_Strict):
    """How the forward pass runs (schema 2). Parity expectations were recorded this way.

    - `graph`: `eager` runs the torchvision module as built; `fused` folds each batch norm
      into the convolution before it at load (torch.fx), the standard inference rewrite:
      fewer passes over memory, outputs equal to ~1e-7.
    - `memory_format`: `channels_last` lays activations out NHWC, which oneDNN's
      convolutions prefer on the CPU.

    Together about 1.9x faster for mobilenet_v3_small on one core (docs/performance.md).
    """

    graph: Literal["eager", "fused"] = "eager"
    memory_format: Literal["contiguous", "channels_last"] = "contiguous"


class ValidationMetrics(_Strict):
    precision: float
    recall: float
    false_positive_rate: float
    accuracy: float
    expected_cost: float  # per parcel; at `damage_rate` when stated (schema 1: the split's own rate)
    n: int
    # Schema 2, optional: the damaged images among n, the damage rate `expected_cost` is at,
    # ranking and calibration quality, and 95% intervals (bootstrap over the validation
    # split, widened to Wilson intervals for rates: docs/decisions.md) keyed by figure.
    positives: int | None = Field(None, ge=0)
    damage_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    roc_auc: float | None = None
    ece: float | None = None
    intervals: dict[str, tuple[float, float]] | None = None

    NEWER: ClassVar[tuple[str, ...]] = ("positives", "damage_rate", "roc_auc", "ece", "intervals")


ThresholdMethod = Literal["min_expected_cost", "target_recall", "fixed"]


class DecisionPolicy(_Strict):
    """What a decision costs and how its threshold is chosen; training configs embed it."""

    positive_label: str = "damaged"
    negative_label: str = "intact"
    cost_false_alarm: float = Field(1.0, ge=0)  # an intact parcel pulled for inspection
    cost_miss: float = Field(5.0, ge=0)  # a damaged parcel shipped to a customer
    method: ThresholdMethod = "min_expected_cost"
    # Schema 2. The recall `target_recall` aims for, and the damage rate expected in
    # production: thresholds and served probabilities are for that rate, not the
    # validation split's (None: the validation split's own rate).
    target_recall: float = Field(0.95, gt=0, le=1)
    deployment_prevalence: Annotated[float, Field(gt=0, lt=1)] | None = None

    @model_validator(mode="after")
    def _distinct_labels(self) -> DecisionPolicy:
        if self.positive_label == self.negative_label:
            raise ValueError("positive_label and negative_label must differ")
        return self


class CalibrationSpec(_Strict):
    """Schema 2. The map from the model's logit z to a calibrated one: slope * z + intercept.

    Fitted on the validation split after checkpoint selection: temperature scaling has
    slope 1/T and intercept 0; Platt scaling fits both. The slope is positive, so the
    ranking of images (and ROC-AUC) never changes.
    """

    method: Literal["none", "temperature", "platt"] = "none"
    slope: float = Field(1.0, gt=0)
    intercept: float = 0.0
    # Optional: why the configured method was not used (a degenerate fit, e.g. a perfectly
    # separated validation split, falls back to `none`), in one line.
    note: str | None = None


class ValidationScores(_Strict):
    """Schema 2. The validation split's raw logits and 0/1 labels: a new operating point
    (costs, damage rate) can be chosen and signed from these without retraining."""

    logits: list[float]
    labels: list[Literal[0, 1]]

    @model_validator(mode="after")
    def _same_length(self) -> ValidationScores:
        if len(self.logits) != len(self.labels):
            raise ValueError("logits and labels must have the same length")
        return self


def log_odds(p: float) -> float:
    return math.log(p / (1.0 - p))


class DecisionSpec(DecisionPolicy):
    """The policy plus the threshold it chose and the validation metrics there."""

    threshold: Probability
    method: ThresholdMethod  # stated in every manifest, no default
    cost_false_alarm: float = Field(ge=0)
    cost_miss: float = Field(ge=0)
    validation: ValidationMetrics | None = None
    # Schema 2: calibration, the damage rates, the expected cost at the deployment rate.
    calibration: CalibrationSpec = CalibrationSpec()
    validation_prevalence: Annotated[float, Field(gt=0, lt=1)] | None = None
    expected_cost: float | None = Field(None, ge=0, description="per parcel at the deployment damage rate")
    validation_scores: ValidationScores | None = None
    # Optional: one line per reason not to trust the figures above (too few validation
    # images, a degenerate calibration or threshold). Training prints and reports them too.
    warnings: list[str] = Field(default_factory=list)

    def logit_map(self) -> tuple[float, float]:
        """(slope, offset) with served probability = sigmoid(slope * logit + offset).

        The offset adds the prior shift from the validation damage rate to the deployment
        one (Bayes' rule on the odds), so served probabilities are for production's rate.
        """
        offset = self.calibration.intercept
        pv, pd = self.validation_prevalence, self.deployment_prevalence
        if pv is not None and pd is not None:
            offset += log_odds(pd) - log_odds(pv)
        return self.calibration.slope, offset

    def decide(self, probability: float) -> str:
        """The one decision rule: the positive label at or above the threshold."""
        return self.positive_label if probability >= self.threshold else self.negative_label


class FeatureHistogram(_Strict):
    """A reference distribution: `cuts` split the line into len(cuts) + 1 bins (the first
    and last open-ended), `fractions` says how much of the reference falls in each."""

    cuts: list[float]
    fractions: list[Annotated[float, Field(ge=0, le=1)]]

    @model_validator(mode="after")
    def _shape(self) -> FeatureHistogram:
        if len(self.fractions) != len(self.cuts) + 1:
            raise ValueError("a histogram needs one more fraction than cuts")
        if any(b <= a for a, b in zip(self.cuts, self.cuts[1:], strict=False)):
            raise ValueError("histogram cuts must increase")
        return self


class FeatureRange(_Strict):
    """A validated range: an image below `low` or above `high` is not judged (None: no edge)."""

    low: float | None = None
    high: float | None = None


class DomainBounds(_Strict):
    """Per-image check against the validated ranges (`model_store.domain`): an image outside
    any of them is answered `retake` with the reason, not damaged or intact."""

    images: int = Field(ge=1)  # validation images the ranges come from
    margin: float = Field(ge=0)
    ranges: dict[str, FeatureRange]
    # Measured at export: test images the bundle sends back for a retake, of all of them
    # (the expected share on photos like the validated ones).
    test_images: int | None = Field(None, ge=0)
    test_retakes: int | None = Field(None, ge=0)


class MonitoringSpec(_Strict):
    """Schema 2. What live traffic is compared with: the validation split through the one
    preprocessing path, scores as served, reweighted to the deployment damage rate."""

    images: int = Field(ge=1)
    decision_rate: Probability  # expected share of positive decisions at the deployment rate
    features: dict[str, FeatureHistogram]
    # The pixel step of the image features; bundles exported before it existed used every pixel.
    stats_stride: int = Field(1, ge=1, le=8)
    # Bundles exported before it existed never answer retake.
    domain: DomainBounds | None = None


class Lineage(_Strict):
    config: dict[str, Any]
    config_sha256: Sha256
    split_manifest_sha256: Sha256
    dataset_fingerprint: Sha256
    seed: int
    epoch: int = Field(ge=0)
    checkpoint_sha256: Sha256
    code_revision: str
    # Schema 2: set when this bundle re-decides another one (same weights, new decision).
    parent_manifest_sha256: Sha256 | None = None
    # Optional: images per label per split ({"train": {"intact": 726, ...}, "val": ..., "test": ...}).
    split_counts: dict[str, dict[str, int]] | None = None


class Environment(_Strict):
    python: str
    torch: str
    torchvision: str
    pillow: str
    device: str


class ReferenceImage(_Strict):
    file: str
    sha256: Sha256
    label: str | None = None  # ground truth when known, for the humans reading it
    expected_probability: Probability
    expected_decision: str

    @field_validator("file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not _REFERENCE_NAME.match(v):
            raise ValueError(f"reference file name {v!r} must be a plain file name")
        return v


class ParitySpec(_Strict):
    tolerance: float = Field(gt=0, le=0.5, description="max abs diff in probability")
    references: list[ReferenceImage] = Field(min_length=1)

    @field_validator("references")
    @classmethod
    def _unique(cls, v: list[ReferenceImage]) -> list[ReferenceImage]:
        names = [r.file for r in v]
        if len(names) != len(set(names)):
            raise ValueError("reference file names must be unique")
        return v


class Manifest(_Strict):
    schema_version: Literal[1, 2] = SCHEMA_VERSION
    name: str = Field(min_length=1, max_length=128)
    version: str = Field(pattern=VERSION_PATTERN)
    created_at: datetime
    model: ModelSpec
    preprocessing: PreprocessingSpec
    runtime: RuntimeSpec = RuntimeSpec()
    decision: DecisionSpec
    lineage: Lineage
    environment: Environment
    weights_sha256: Sha256
    parity: ParitySpec
    monitoring: MonitoringSpec | None = None  # schema 2

    @model_validator(mode="after")
    def _fields_of_its_schema(self) -> Manifest:
        if self.schema_version == 1:
            newer = [
                name
                for name, value, default in (
                    ("preprocessing.jpeg_dct_scaling", self.preprocessing.jpeg_dct_scaling, False),
                    ("runtime", self.runtime, RuntimeSpec()),
                    ("decision.calibration", self.decision.calibration, CalibrationSpec()),
                    ("decision.deployment_prevalence", self.decision.deployment_prevalence, None),
                    ("decision.validation_prevalence", self.decision.validation_prevalence, None),
                    ("decision.expected_cost", self.decision.expected_cost, None),
                    ("decision.validation_scores", self.decision.validation_scores, None),
                    ("decision.warnings", self.decision.warnings, []),
                    *(
                        (f"decision.validation.{k}", getattr(self.decision.validation, k), None)
                        for k in ValidationMetrics.NEWER
                        if self.decision.validation is not None
                    ),
                    ("lineage.split_counts", self.lineage.split_counts, None),
                    ("lineage.parent_manifest_sha256", self.lineage.parent_manifest_sha256, None),
                    ("monitoring", self.monitoring, None),
                )
                if value != default
            ]
            if newer:
                raise ValueError(f"{', '.join(newer)} need schema_version 2")
        return self

    def to_json_bytes(self) -> bytes:
        """Canonical bytes: the same manifest always serialises identically."""
        data = self.model_dump(mode="json")
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and validate manifest bytes, or raise ManifestInvalid naming the first problem."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestInvalid(f"manifest.json is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestInvalid("manifest.json must hold a JSON object")
    if data.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        raise ManifestInvalid(
            f"manifest.json schema_version is {data.get('schema_version')!r}, "
            f"this code reads {' and '.join(map(str, READABLE_SCHEMA_VERSIONS))}"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestInvalid(f"manifest.json fails the schema at {describe_validation_errors(exc.errors())}") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
