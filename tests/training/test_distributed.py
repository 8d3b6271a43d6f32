"""The same train command under torchrun: DDP over 2 CPU processes with gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.utils.training import SMOKE
from training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def torchrun(data_dir: Path, run_dir: Path, *extra: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training", "train", "--config", str(SMOKE), "--data", str(data_dir), "--run-dir", str(run_dir),
           "--set", "loader.workers=0", *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.fixture(scope="module")
def ddp_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp") / "straight"
    torchrun(data_dir, run_dir)
    return run_dir


def test_torchrun_two_cpu_processes(ddp_run: Path) -> None:
    rows = (ddp_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in rows] == [1, 2]  # rank 0 alone writes: one line per epoch
    ckpt = load_checkpoint(ddp_run / "checkpoints" / "last.pt")
    assert len(ckpt["rng"]) == 2  # one RNG state per rank, for a faithful resume
    assert (ddp_run / "eval.json").exists() and (ddp_run / "report.html").exists()


def test_ddp_stop_and_resume_is_bitwise_equal_to_a_straight_run(ddp_run: Path, data_dir: Path, tmp_path: Path) -> None:
    resumed = tmp_path / "resumed"
    torchrun(data_dir, resumed, "--stop-after-epoch", "1")
    assert load_checkpoint(resumed / "checkpoints" / "last.pt")["epoch"] == 1
    torchrun(data_dir, resumed, "--resume")
    for name in ("last", "best"):
        a = load_checkpoint(resumed / "checkpoints" / f"{name}.pt")["model"]
        b = load_checkpoint(ddp_run / "checkpoints" / f"{name}.pt")["model"]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name}.pt differs after a DDP resume"
