"""Training configs for tests: `configs/smoke.toml` with overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training.config import TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.toml"


def smoke_config(*overrides: str) -> TrainConfig:
    return load_config(SMOKE, list(overrides))


def same_figures(got: dict[str, Any], reported: dict[str, Any]) -> None:
    """`evaluate` prints what training reported: one definition, one number. Counts and what
    rests on the ranking are equal exactly; log loss and ECE (continuous in each probability)
    to 1e-6, since the bundle serves through its fused graph (parity tolerance 1e-4)."""
    for key in ("at_threshold", "counts", "test_roc_auc", "test_pr_auc"):
        assert got[key] == reported[key], key
    for key in ("test_log_loss", "test_ece"):
        assert got[key] == pytest.approx(reported[key], abs=1e-6), key
    assert got["intervals"].keys() == reported["intervals"].keys()
    for key, interval in reported["intervals"].items():
        assert got["intervals"][key] == pytest.approx(interval, abs=1e-6), key
