"""The training run: plain functions, in the style of torchvision's reference scripts.

`run(...)` trains and validates every epoch, writes `metrics.jsonl` and the `last`/`best`
checkpoints, and at the end evaluates the best checkpoint, chooses the operating
threshold on validation data, reports test metrics at it, and writes the report.
Under `torchrun` it uses DistributedDataParallel; rank 0 alone writes.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from model_store.preprocessing import Preprocessor
from model_store.zoo import build_model
from training.checkpoint import load_checkpoint, remove_debris, save_checkpoint, set_rng_state
from training.config import TrainConfig
from training.data import Augment, ImageDataset, SplitManifest, check_matches, make_split, summary
from training.distributed import Dist, gather_rng, setup_distributed
from training.finalize import finalize
from training.loops import eval_loader, evaluate, recalibrate_batchnorm, train_one_epoch, uncalibrated_probabilities
from training.metrics import ranking_metrics
from training.progress import Log, data_line, epoch_line, log_stderr
from training.sufficiency import check_split, describe

# Keys a resumed run may change: they do not alter a single number the run computes
# (augmentation randomness is a function of (seed, epoch, index), not of the workers).
# Anything else, `optim.epochs` included (it reshapes the learning-rate schedule), would
# make the result match neither run, so resume refuses it and names the key.
RESUMABLE_CHANGES = {"loader.workers", "data.allow_small"}


class RunError(Exception):
    """The run cannot start or continue; the message says why."""


def resolve_device(config: TrainConfig, d: Dist) -> torch.device:
    want = config.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        if not torch.cuda.is_available():
            raise RunError("device = 'cuda' but no CUDA device is available")
        torch.cuda.set_device(d.local_rank)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        return torch.device("cuda", d.local_rank)
    if config.optim.amp:
        raise RunError("optim.amp needs a CUDA device")
    return torch.device("cpu")


def code_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev.stdout.strip() + ("-dirty" if dirty.strip() else "")


def load_pretrained(model: nn.Module, path: str, log: Log) -> None:
    """Weights from a local safetensors file; mismatched heads are skipped. Never a pickle."""
    from safetensors.torch import load_file

    p = Path(path)
    if p.suffix != ".safetensors":
        raise RunError(f"pretrained weights must be a .safetensors file, not {p.name}; pickles are not loaded")
    if not p.is_file():
        raise RunError(f"pretrained weights file {p} does not exist")
    given = load_file(p)
    own = model.state_dict()
    usable = {k: v for k, v in given.items() if k in own and own[k].shape == v.shape}
    if len(usable) < len(own) // 2:
        raise RunError(f"{p.name} fits only {len(usable)} of {len(own)} tensors: wrong architecture?")
    model.load_state_dict(usable, strict=False)
    log(f"pretrained: loaded {len(usable)}/{len(own)} tensors from {p} (the rest, e.g. the head, stay new)")


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to zero, per optimizer step."""
    total = max(1, config.optim.epochs * steps_per_epoch)
    warmup = min(total - 1, config.optim.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set(old) | set(new)
    out: set[str] = set()
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out |= _config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.add(f"{prefix}{k}")
    return out


def device_description(device: torch.device) -> str:
    """What the bundle's `environment.device` records: `cpu`, or `cuda (<GPU name>)`."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def prepare_run(
    config: TrainConfig, data_dir: Path, run_dir: Path, resume: bool, d: Dist, device: torch.device, log: Log
) -> tuple[TrainConfig, SplitManifest]:
    """Create or re-open a run directory; refuse anything that would silently change it."""
    ckpt = run_dir / "checkpoints" / "last.pt"
    if resume:
        if not ckpt.exists():
            raise RunError(f"--resume: {run_dir} has no checkpoints/last.pt")
        saved = json.loads((run_dir / "config.json").read_text())
        changed = _config_diff(saved, config.model_dump(mode="json")) - RESUMABLE_CHANGES
        if changed:
            raise RunError(
                f"--resume cannot change {', '.join(sorted(changed))}: the result would match neither run; "
                "start a new run directory instead"
            )
        split = SplitManifest.from_json_bytes((run_dir / "split.json").read_bytes())
        check_matches(split, data_dir)
    else:
        if ckpt.exists():
            raise RunError(f"{run_dir} already holds a run; use --resume or a new --run-dir")
        split = make_split(
            data_dir,
            (config.decision.negative_label, config.decision.positive_label),
            config.seed,
            config.data.val_fraction,
            config.data.test_fraction,
        )
    counts = summary(split)
    refusal, warnings = check_split(counts, config.data.val_fraction, config.data.test_fraction)
    if refusal and not config.data.allow_small:
        raise RunError(refusal)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_bytes(config.to_json_bytes())
        (run_dir / "config.sha256").write_text(config.sha256 + "\n")
        split.write(run_dir / "split.json")
        meta = {
            "data_dir": str(Path(data_dir).resolve()),
            "device": device_description(device),
            "code_revision": code_revision(),
            "dataset_fingerprint": split.fingerprint,
            "split": summary(split),
        }
        (run_dir / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
        log(data_line(counts, split.sha256))
        log(f"images per class: {describe(counts)}")
        for line in warnings:  # a split below the refusal line says so here, when data.allow_small went on
            log(f"warning: {line}")
    return config, split


def run(
    config: TrainConfig,
    data_dir: Path,
    run_dir: Path,
    *,
    resume: bool = False,
    stop_after_epoch: int | None = None,
    log: Log = log_stderr,
) -> dict[str, Any] | None:
    """Train (or resume) a run. Returns the final evaluation on rank 0 when training finished."""
    d = setup_distributed(
        config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    device = resolve_device(config, d)
    config, split = prepare_run(config, data_dir, Path(run_dir), resume, d, device, log)
    if d.world > 1:
        dist.barrier()

    torch.manual_seed(config.seed)
    pre = Preprocessor(config.preprocessing)
    aug = config.augment
    augment = Augment(aug.hflip, aug.rotate_degrees, aug.brightness, aug.contrast, aug.crop_scale)
    positive = config.decision.positive_label
    train_ds = ImageDataset(data_dir, split.select("train"), pre, positive, augment, config.seed)
    val_ds = ImageDataset(data_dir, split.select("val"), pre, positive)
    calib_ds = ImageDataset(data_dir, split.select("train"), pre, positive)  # no augmentation
    sampler: DistributedSampler[tuple[torch.Tensor, torch.Tensor, int]] = DistributedSampler(
        train_ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=config.seed
    )
    loader_gen = torch.Generator()
    train_loader = DataLoader(
        train_ds,
        batch_size=config.optim.batch_size,
        sampler=sampler,
        num_workers=config.loader.workers,
        generator=loader_gen,
        drop_last=False,
    )

    model = build_model(config.model.spec())
    if config.model.pretrained and not resume:
        load_pretrained(model, config.model.pretrained, log)
    model.to(device)
    core = model
    if d.world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(core.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    scheduler = make_scheduler(optimizer, config, len(train_loader))
    scaler = torch.amp.GradScaler("cuda") if config.optim.amp else None

    start_epoch, best, best_epoch = 1, math.inf, 0
    ckpt_dir = Path(run_dir) / "checkpoints"
    if resume:
        if d.main and remove_debris(ckpt_dir):
            log("removed a checkpoint a killed run left half written")
        ckpt = load_checkpoint(ckpt_dir / "last.pt")
        if ckpt["split_sha256"] != split.sha256:
            raise RunError("checkpoint was made with another split manifest")
        core.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        if len(ckpt["rng"]) != d.world:
            raise RunError(f"checkpoint holds RNG states of {len(ckpt['rng'])} rank(s), this run has {d.world}")
        set_rng_state(ckpt["rng"][d.rank])
        start_epoch, best, best_epoch = ckpt["epoch"] + 1, ckpt["best_metric"], ckpt["best_epoch"]
        log(f"resumed from epoch {ckpt['epoch']} (step {ckpt['step']})")

    sign = 1.0 if config.optim.select_metric == "val_loss" else -1.0  # lower is better after sign
    for epoch in range(start_epoch, config.optim.epochs + 1):
        sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        loader_gen.manual_seed(config.seed * 100_003 + epoch)
        stats = train_one_epoch(model, train_loader, optimizer, scheduler, scaler, device, epoch, d)
        rngs = gather_rng(d)
        if d.main:
            batch, workers = config.optim.batch_size, config.loader.workers
            recalibrate_batchnorm(
                core, eval_loader(calib_ds, batch, workers), device, config.optim.bn_recalibration_images
            )
            z, t, loss = evaluate(core, eval_loader(val_ds, batch, workers), device)
            p = uncalibrated_probabilities(z)
            row = {
                "epoch": epoch,
                "lr": scheduler.get_last_lr()[0],
                **stats,
                **ranking_metrics("val", p, t, loss),
            }
            score = sign * float(row[config.optim.select_metric])
            improved = score < best
            if improved:
                best, best_epoch = score, epoch
            ckpt = {
                "model": core.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler else {},
                "epoch": epoch,
                "step": epoch * len(train_loader),
                "best_metric": best,
                "best_epoch": best_epoch,
                "rng": rngs,
                "config": config.model_dump(mode="json"),
                "split_sha256": split.sha256,
            }
            # best.pt before last.pt: a kill between the two leaves last.pt at the previous
            # epoch, so resume recomputes this epoch (bit for bit) and writes both again. The
            # other order could leave a last.pt whose best_epoch names a best.pt never written.
            if improved:
                save_checkpoint(ckpt_dir / "best.pt", ckpt)
            save_checkpoint(ckpt_dir / "last.pt", ckpt)
            with open(Path(run_dir) / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            log(epoch_line(row, config.optim.epochs, improved))
        if d.world > 1:
            dist.barrier()
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < config.optim.epochs:
            log(f"stopping after epoch {epoch} as asked; continue with --resume")
            return None

    result = None
    if d.main:
        result = finalize(config, split, data_dir, Path(run_dir), device, log)
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result
