"""The loops over data: one training epoch, batch-norm recalibration, evaluation.

Plain functions in the style of torchvision's reference scripts; `train.run` and
`finalize` both call them, and neither imports the other's module for them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.distributed import Dist
from training.progress import progress


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
    epoch: int,
    d: Dist,
) -> dict[str, float]:
    model.train()
    loss_fn = nn.BCEWithLogitsLoss()
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    for x, y, _ in progress(loader, desc=f"epoch {epoch}", enabled=d.main):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=scaler is not None):
            loss = loss_fn(model(x)[:, 0], y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(y)
        seen += len(y)
    seconds = time.perf_counter() - start
    totals = torch.tensor([total_loss, float(seen)], dtype=torch.float64)
    if d.world > 1:
        dist.all_reduce(totals)
    return {
        "train_loss": float(totals[0] / totals[1]),
        "train_images_per_s": float(totals[1]) / seconds,
        "epoch_seconds": seconds,
    }


def recalibrate_batchnorm(model: nn.Module, loader: Iterable[Any], device: torch.device, max_images: int) -> None:
    """Precise BN: exact batch-norm statistics over `max_images` un-augmented training images.

    `loader` yields input batches, or (inputs, ...) tuples as the training loaders do.

    Only BN layers switch to train mode, so dropout draws no random numbers and the run's
    RNG stream (and therefore resume) is unaffected.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or max_images <= 0:
        return
    model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = the exact mean over batches
        m.train()
    seen = 0
    with torch.no_grad():
        for batch in loader:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            model(x.to(device))
            seen += len(x)
            if seen >= max_images:
                break
    for m, momentum in zip(bns, saved, strict=True):
        m.momentum = momentum
    model.eval()


def evaluate(model: nn.Module, loader: DataLoader[Any], device: torch.device) -> tuple[np.ndarray, np.ndarray, float]:
    """(logits as float32, targets, mean BCE loss) in eval mode, under inference_mode."""
    model.eval()
    outputs, targets, total = [], [], 0.0
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    with torch.inference_mode():
        for x, y, _ in loader:
            logits = model(x.to(device))[:, 0].float().cpu()
            total += loss_fn(logits, y).item()
            outputs.append(logits)
            targets.append(y)
    z = torch.cat(outputs).numpy()
    t = torch.cat(targets).numpy().astype(np.int64)
    return z, t, total / max(1, len(t))


def uncalibrated_probabilities(logits: np.ndarray) -> np.ndarray:
    """Uncalibrated probabilities, computed as the Predictor does for an uncalibrated bundle."""
    out: np.ndarray = torch.sigmoid(torch.as_tensor(logits, dtype=torch.float32)).numpy().astype(np.float64)
    return out


def eval_loader(dataset: Dataset[Any], batch_size: int, workers: int) -> DataLoader[Any]:
    # Its own generator: starting an iterator draws a worker seed, and drawing it from the
    # global RNG would shift dropout's random stream and break bitwise resume.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )
