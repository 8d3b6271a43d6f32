"""Training configs for tests: `configs/smoke.toml` with overrides."""

from __future__ import annotations

from pathlib import Path

from training.config import TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.toml"


def smoke_config(*overrides: str) -> TrainConfig:
    return load_config(SMOKE, list(overrides))
