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

from model_store.errors import describe_validation_errors
from model_store.manifest import DecisionPolicy, ModelSpec, PreprocessingSpec, RuntimeSpec


class ConfigError(Exception):
    """The config cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    # Train on a split too small for the figures it prints (training.sufficiency), with
    # every figure marked, instead of refusing. `--allow-small-data` sets it.
    allow_small: bool = False


class ModelConfig(ModelSpec):
    """The manifest's `model` section, plus where initial weights come from."""

    pretrained: str = ""  # path to a local .safetensors file; never downloaded

    def spec(self) -> ModelSpec:
        return ModelSpec.model_validate(self.model_dump(exclude={"pretrained"}))


# Training's defaults for the sections that go into the bundle as they are. The contract
# (`model_store.manifest`) has no defaults for these on purpose: a manifest states them.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"architecture": "mobilenet_v3_small"},
    "preprocessing": {
        "resize": 144,  # shorter side, pixels
        "crop": 128,  # centre crop, pixels
        "jpeg_dct_scaling": True,  # decode large JPEGs at reduced size (see docs/performance.md)
        "mean": [0.485, 0.456, 0.406],  # ImageNet statistics
        "std": [0.229, 0.224, 0.225],
    },
}


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


class DecisionConfig(DecisionPolicy):
    """The manifest's decision policy, plus how probabilities are calibrated.

    `calibration` is fitted on the validation split after checkpoint selection:
    `temperature` (one parameter, the default), `platt` (slope and intercept) or `none`.
    """

    calibration: Literal["none", "temperature", "platt"] = "temperature"

    @model_validator(mode="after")
    def _chosen_by_training(self) -> DecisionConfig:
        if self.method == "fixed":
            raise ValueError("method 'fixed' is for hand-made bundles; training chooses by cost or recall")
        return self


class ExportConfig(_Section):
    name: str = "parcel-damage"
    parity_tolerance: float = Field(1e-4, gt=0, le=0.5)
    references_per_class: int = Field(4, ge=1)
    hard_references: int = Field(4, ge=0)  # test images nearest the threshold


class TrainConfig(_Section):
    seed: int = 1234
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = DataConfig()
    model: ModelConfig
    preprocessing: PreprocessingSpec
    # How the bundle's forward pass runs when served (measured fastest here: docs/performance.md).
    runtime: RuntimeSpec = RuntimeSpec(graph="fused", memory_format="channels_last")
    augment: AugmentConfig = AugmentConfig()
    optim: OptimConfig = OptimConfig()
    loader: LoaderConfig = LoaderConfig()
    decision: DecisionConfig = DecisionConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="before")
    @classmethod
    def _training_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for section, defaults in _DEFAULTS.items():
            given = merged.get(section, {})
            merged[section] = {**defaults, **given} if isinstance(given, dict) else given
        return merged

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.data.val_fraction + self.data.test_fraction >= 0.8:
            raise ValueError("data.val_fraction + data.test_fraction leaves too little to train on")
        return self

    def to_json_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()

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
        raise ConfigError(describe_validation_errors(exc.errors(), source)) from None


def config_from_run(run_dir: Path) -> TrainConfig:
    """The resolved config a run directory was started with."""
    path = Path(run_dir) / "config.json"
    try:
        raw = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{run_dir} is not a run directory (no config.json)") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    return validate_config(data, str(path))
