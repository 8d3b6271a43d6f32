"""Runs: artefacts, faithful resume, repeatability, refusals, pretrained weights, report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.utils.training import smoke_config
from training.checkpoint import load_checkpoint
from training.data import DataError
from training.train import RunError, run

QUIET: dict[str, Any] = {"log": lambda _: None}


def _weights(run_dir: Path, name: str = "last") -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = load_checkpoint(run_dir / "checkpoints" / f"{name}.pt")["model"]
    return weights


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_run_writes_metrics_checkpoints_and_evaluation(finished_run) -> None:
    run_dir, evaluation = finished_run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    for key in ("train_loss", "val_loss", "val_accuracy", "val_roc_auc", "val_pr_auc", "train_images_per_s", "lr"):
        assert all(isinstance(r[key], float) for r in rows), key
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")  # weights_only=True inside
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "step",
        "best_metric",
        "rng",
        "config",
        "split_sha256",
    ):
        assert key in ckpt, key
    assert set(ckpt["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    assert ckpt["split_sha256"] == (run_dir / "split.json.sha256").read_text().strip()
    assert (run_dir / "config.sha256").read_text().strip() == smoke_config("optim.epochs=4").sha256
    assert 0.0 <= evaluation["threshold"] <= 1.0
    assert evaluation["test"]["at_threshold"]["n"] == len(evaluation["predictions"]["test"])
    assert 1 <= evaluation["best_epoch"] <= 4


def test_stop_and_resume_is_bitwise_equal_to_a_straight_run(finished_run, data_dir: Path, tmp_path: Path) -> None:
    """2 epochs, stop, resume to 4 == 4 straight (2 data-loader workers straight).

    The resumed half runs with no workers, the one change resume allows: augmentation
    randomness is a function of (seed, epoch, index), so it must not matter. The straight
    run is a separate process history, so this also shows the same config gives the same
    weights.
    """
    straight, _ = finished_run
    resumed = tmp_path / "resumed"
    config = smoke_config("optim.epochs=4")
    assert config.loader.workers == 2
    assert run(config, data_dir, resumed, stop_after_epoch=2, **QUIET) is None
    assert load_checkpoint(resumed / "checkpoints" / "last.pt")["epoch"] == 2
    run(smoke_config("optim.epochs=4", "loader.workers=0"), data_dir, resumed, resume=True, **QUIET)
    _assert_bitwise_equal(_weights(resumed), _weights(straight))
    _assert_bitwise_equal(_weights(resumed, "best"), _weights(straight, "best"))
    keep = ("epoch", "train_loss", "val_loss", "val_roc_auc", "lr")
    rows = [{k: json.loads(line)[k] for k in keep} for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    ref = [{k: json.loads(line)[k] for k in keep} for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert rows == ref


def test_same_config_twice_gives_the_same_weights(data_dir: Path, tmp_path: Path) -> None:
    config = smoke_config("optim.epochs=1", "loader.workers=0")
    for name in ("a", "b"):
        run(config, data_dir, tmp_path / name, **QUIET)
    _assert_bitwise_equal(_weights(tmp_path / "a"), _weights(tmp_path / "b"))


def test_a_new_run_refuses_an_existing_run_dir(finished_run, data_dir: Path) -> None:
    run_dir, _ = finished_run
    with pytest.raises(RunError, match="already holds a run"):
        run(smoke_config("optim.epochs=4"), data_dir, run_dir, **QUIET)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ("optim.lr=0.1", "optim.lr"),
        # More epochs would stretch the learning-rate schedule: the result matches neither run.
        ("optim.epochs=6", "optim.epochs"),
        ('preprocessing.interpolation="bicubic"', "preprocessing.interpolation"),
    ],
)
def test_resume_refuses_a_config_change_and_names_the_key(finished_run, data_dir: Path, change: str, key: str) -> None:
    run_dir, _ = finished_run
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    overrides = ["optim.epochs=4", change] if not change.startswith("optim.epochs") else [change]
    with pytest.raises(RunError, match=rf"--resume cannot change {key}:"):
        run(smoke_config(*overrides), data_dir, run_dir, resume=True, **QUIET)
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_refuses_changed_data(finished_run, data_dir: Path, tmp_path: Path) -> None:
    run_dir, _ = finished_run
    moved = tmp_path / "data"
    shutil.copytree(data_dir, moved)
    victim = sorted((moved / "damaged").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-10])
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    with pytest.raises(DataError, match="no longer matches"):
        run(smoke_config("optim.epochs=4"), moved, copy, resume=True, **QUIET)


def test_resume_without_a_checkpoint_is_refused(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"no checkpoints/last\.pt"):
        run(smoke_config(), data_dir, tmp_path / "empty", resume=True, **QUIET)


def test_pretrained_weights_come_from_a_local_safetensors_file(finished_run, data_dir: Path, tmp_path: Path) -> None:
    run_dir, _ = finished_run
    weights = tmp_path / "pretrained.safetensors"
    save_file(_weights(run_dir, "best"), weights)
    messages: list[str] = []
    config = smoke_config("optim.epochs=1", "loader.workers=0", f'model.pretrained="{weights}"')
    run(config, data_dir, tmp_path / "ft", stop_after_epoch=0, log=messages.append)
    assert any(m.startswith("pretrained: loaded") for m in messages)

    torch.save(_weights(run_dir), tmp_path / "pretrained.pt")
    bad = smoke_config("optim.epochs=1", f'model.pretrained="{tmp_path / "pretrained.pt"}"')
    with pytest.raises(RunError, match=r"must be a \.safetensors file"):
        run(bad, data_dir, tmp_path / "ft2", **QUIET)
    missing = smoke_config("optim.epochs=1", f'model.pretrained="{tmp_path / "nope.safetensors"}"')
    with pytest.raises(RunError, match="does not exist"):
        run(missing, data_dir, tmp_path / "ft3", **QUIET)


def test_report_has_every_plot(finished_run) -> None:
    run_dir, _ = finished_run
    page = (run_dir / "report.html").read_text()
    for name in ("curves", "roc_pr", "cost", "confusion", "worst_errors", "worst_errors_heatmaps"):
        assert f"plots/{name}.png" in page, name
        with Image.open(run_dir / "plots" / f"{name}.png") as img:
            assert img.width > 300 and img.height > 200
