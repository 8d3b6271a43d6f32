"""kill -9 of training and export at fault-injection points (`model_store.faults`):
a run killed while writing a checkpoint resumes from the last good one to exactly the
straight run's result, leaving no temp file; an export killed mid-way leaves no partial
bundle and no store change, and the next export removes its debris and succeeds once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_store.bundle import load_bundle
from model_store.faults import ENV as CRASH_AT
from model_store.store import FilesystemStore
from tests.utils.training import SMOKE
from training.checkpoint import load_checkpoint
from training.export import EXPORT_PREFIX

pytestmark = pytest.mark.slow


def _cli(*args: str, crash: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_AT}
    if crash:
        env[CRASH_AT] = crash
    return subprocess.run(
        [sys.executable, "-m", "training", *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_a_run_killed_while_checkpointing_resumes_to_the_straight_runs_result(
    finished_run, data_dir: Path, tmp_path: Path
) -> None:
    """Killed while writing epoch 2's last.pt: the temp file is debris, last.pt is still
    epoch 1's, and resume recomputes epoch 2 onwards bit for bit."""
    straight, _ = finished_run  # configs/smoke.toml with optim.epochs=4, trained without a kill
    run_dir = tmp_path / "run"
    args = [
        "train",
        "--config",
        str(SMOKE),
        "--data",
        str(data_dir),
        "--run-dir",
        str(run_dir),
        "--set",
        "optim.epochs=4",
    ]
    killed = _cli(*args, crash="checkpoint.last.temp_written@2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ckpt_dir = run_dir / "checkpoints"
    assert load_checkpoint(ckpt_dir / "last.pt")["epoch"] == 1  # never torn: the old file until the new one is whole
    assert list(ckpt_dir.glob(".last.pt.*.tmp"))  # the half-written checkpoint

    resumed = _cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from epoch 1" in resumed.stderr
    assert list(ckpt_dir.glob(".*.tmp")) == []  # debris removed
    for name in ("last.pt", "best.pt"):
        assert _same_weights(ckpt_dir / name, straight / "checkpoints" / name), name
    ours, theirs = (json.loads((d / "eval.json").read_text()) for d in (run_dir, straight))
    assert (ours["best_epoch"], ours["threshold"]) == (theirs["best_epoch"], theirs["threshold"])


def test_an_export_killed_before_its_import_changes_nothing_and_the_next_one_cleans_up(
    finished_run, keys, bundles, tmp_path: Path
) -> None:
    run_dir, _ = finished_run
    store = FilesystemStore(tmp_path / "store", keys[1])
    store.import_bundle(bundles["v1"], actor="test")
    before = store.audit_log()
    args = ["export", "--run", str(run_dir), "--key", str(keys[0]), "--version", "exp-1"]
    args += ["--store", str(store.root), "--public-key", str(keys[1])]

    killed = _cli(*args, crash="export.written")  # signed and verified, not yet imported
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert store.audit_log() == before and [i.version for i in store.versions()] == ["v1"]
    assert len(list(tmp_path.glob(f"{EXPORT_PREFIX}*"))) == 1  # the dead export's folder

    done = _cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(tmp_path.glob(f"{EXPORT_PREFIX}*")) == []
    imports = [e for e in store.audit_log() if e.to_version == "exp-1"]
    assert len(imports) == 1 and store.load("exp-1").version == "exp-1"


def test_a_bundle_killed_while_being_written_never_appears_and_the_next_write_cleans_up(
    finished_run, keys, tmp_path: Path
) -> None:
    run_dir, _ = finished_run
    out = tmp_path / "bundle"
    args = ["export", "--run", str(run_dir), "--key", str(keys[0]), "--version", "exp-2", "--out", str(out)]
    killed = _cli(*args, crash="bundle.draft_signed")  # weights, references and a signed draft manifest
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists()
    assert list(tmp_path.glob(".bundle.*"))  # the staging folder and its public key file

    done = _cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_bundle(out, keys[1]).version == "exp-2"
    assert list(tmp_path.glob(".bundle.*")) == []
