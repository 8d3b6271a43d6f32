"""The same train command under torchrun: DDP over 2 CPU processes with gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.training.conftest import SMOKE
from training.checkpoint import load_checkpoint


def test_torchrun_two_cpu_processes(data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "training",
        "train",
        "--config",
        str(SMOKE),
        "--data",
        str(data_dir),
        "--run-dir",
        str(run_dir),
        "--set",
        "loader.workers=0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in rows] == [1, 2]  # rank 0 alone writes: one line per epoch
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert len(ckpt["rng"]) == 2  # one RNG state per rank, for a faithful resume
    assert (run_dir / "eval.json").exists() and (run_dir / "report.html").exists()
