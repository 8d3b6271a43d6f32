"""Training fixtures: one small synthetic data set and one finished smoke run per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.utils.training import smoke_config
from training.synth import generate
from training.train import run


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "parcels"
    generate(root, count=120, seed=3)
    return root


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, dict[str, Any]]:
    """A completed 4-epoch smoke run with data-loader workers: (run dir, evaluation)."""
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    result = run(smoke_config("optim.epochs=4"), data_dir, run_dir, log=lambda _: None)
    assert result is not None
    return run_dir, result
