"""Run configuration: a TOML file validated by pydantic; unknown keys are errors.

`--set optim.lr=0.001` overrides a value (parsed as a TOML value, so `true`, `[0.5, 1.0]`
and `"text"` work). The resolved config is saved in the run directory with its sha256.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model_store.manifest import Architecture, Interpolation, ModelSpec, PreprocessingSpec


class ConfigError(Exception):
    """The config cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)


class ModelConfig(_Section):
    architecture: Architecture = "mobilenet_v3_small"
    kwargs: dict[str, float | int | bool | str] = Field(default_factory=dict)
    pretrained: str = ""  # path to a local .safetensors file; never downloaded


class PreprocessingConfig(_Section):
    resize: int = Field(144, gt=0)  # shorter side, pixels
    crop: int = Field(128, gt=0)  # centre crop, pixels
    interpolation: Interpolation = "bilinear"
    antialias: bool = True
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def spec(self) -> PreprocessingSpec:
        return PreprocessingSpec(**self.model_dump())


class AugmentConfig(_Section):
    hflip: bool = True
    rotate_degrees: float = Field(8.0, ge=0, le=45)
    brightness: float = Field(0.2, ge=0, lt=1)
    contrast: float = Field(0.2, ge=0, lt=1)
    crop_scale: tuple[float, float] = (0.75, 1.0)


class OptimConfig(_Section):
    epochs: int = Field(8, gt=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(3e-3, gt=0)  # AdamW peak learning rate
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: int = Field(1, ge=0)  # linear warm-up, then cosine decay to 0
    amp: bool = False  # mixed precision; CUDA only
    select_metric: Literal["val_loss", "val_roc_auc"] = "val_loss"
    # Recompute batch-norm statistics on this many training images before each evaluation.
    # torchvision's MobileNetV3/EfficientNet use BN momentum 0.01, so after a few hundred
    # steps their running stats are still mostly the initial ones and eval outputs collapse.
    bn_recalibration_images: int = Field(512, ge=0)


class LoaderConfig(_Section):
    workers: int = Field(2, ge=0)


class DecisionConfig(_Section):
    method: Literal["min_expected_cost", "target_recall"] = "min_expected_cost"
    cost_false_alarm: float = Field(1.0, ge=0)  # cost of flagging an intact parcel
    cost_miss: float = Field(5.0, ge=0)  # cost of shipping a damaged one unflagged
    target_recall: float = Field(0.95, gt=0, le=1)  # used by method = "target_recall"
    positive_label: str = "damaged"
    negative_label: str = "intact"


class ExportConfig(_Section):
    name: str = "parcel-damage"
    parity_tolerance: float = Field(1e-4, gt=0, le=0.5)
    references_per_class: int = Field(4, ge=1)
    hard_references: int = Field(4, ge=0)  # test images nearest the threshold


class TrainConfig(_Section):
    seed: int = 1234
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    augment: AugmentConfig = AugmentConfig()
    optim: OptimConfig = OptimConfig()
    loader: LoaderConfig = LoaderConfig()
    decision: DecisionConfig = DecisionConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.preprocessing.crop > self.preprocessing.resize:
            raise ValueError("preprocessing.crop must not exceed preprocessing.resize")
        if self.decision.positive_label == self.decision.negative_label:
            raise ValueError("decision.positive_label and negative_label must differ")
        if self.data.val_fraction + self.data.test_fraction >= 0.8:
            raise ValueError("data.val_fraction + data.test_fraction leaves too little to train on")
        return self

    def to_json_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()

    def model_spec(self) -> ModelSpec:
        return ModelSpec(architecture=self.model.architecture, kwargs=dict(self.model.kwargs))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json_bytes()).hexdigest()


def _set(data: dict[str, Any], dotted: str, raw: str) -> None:
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: treat it as a string
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k} is not a section")
    node[keys[-1]] = value


def load_config(path: Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a TOML config, apply `key=value` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        _set(data, key.strip(), raw.strip())
    return validate_config(data, source=str(path or "defaults"))


def validate_config(data: dict[str, Any], source: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        kind = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{source}: {where}: {kind}") from None
