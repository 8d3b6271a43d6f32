"""Checkpoints: the whole run state, written atomically, read with `weights_only=True`.

One dict: model, optimizer, scheduler, AMP scaler, epoch and step, best metric, RNG states
(python, numpy, torch, CUDA; one set per rank), config, split manifest sha256. Resume
starts at `epoch + 1` and continues bit for bit.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from model_store.faults import crash_point
from model_store.fsutil import atomic_write

CHECKPOINT_FORMAT = 1


def rng_state() -> dict[str, Any]:
    """All RNG states as plain types and tensors, so `weights_only=True` can read them."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(mt), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> str:
    """Write atomically (temp file, fsync, rename); returns the file's sha256."""

    def write(f: IO[bytes]) -> None:
        torch.save({"format": CHECKPOINT_FORMAT, **checkpoint}, f)
        crash_point(f"checkpoint.{path.stem}.temp_written")  # a kill here leaves a temp file

    atomic_write(path, write)
    crash_point(f"checkpoint.{path.stem}.replaced")
    return file_sha256(path)


def remove_debris(ckpt_dir: Path) -> int:
    """Remove temp files a run killed mid-write left (`atomic_write`'s `.name.*.tmp`); how many.

    A run directory belongs to one run at a time, so any temp file in it is abandoned.
    """
    stale = list(ckpt_dir.glob(".*.tmp")) if ckpt_dir.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects."""
    ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {ckpt.get('format')!r} is not {CHECKPOINT_FORMAT}")
    return ckpt


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
