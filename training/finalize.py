"""After the last epoch: evaluate the best checkpoint, calibrate, choose the threshold, report.

Calibration and the threshold come from the validation split only; the test split is
touched once, here, and its metrics are reported at that threshold (counts at the test
split's own damage rate, expected cost at the deployment rate), each with its 95% interval.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_store.preprocessing import Preprocessor
from model_store.zoo import build_model
from training import calibration
from training import metrics as M
from training.checkpoint import file_sha256, load_checkpoint
from training.config import TrainConfig
from training.data import ImageDataset, Split, SplitManifest, summary
from training.loops import eval_loader, evaluate, uncalibrated_probabilities
from training.operating_point import choose_operating_point, served, split_figures
from training.progress import Log, summary_lines
from training.report import write_report

INTERVALS = {
    "level": M.INTERVAL_LEVEL,
    "method": "stratified percentile bootstrap over the split, at least the Wilson interval for rates",
    "resamples": M.BOOTSTRAP_RESAMPLES,
    "seed": M.BOOTSTRAP_SEED,
}


def finalize(
    config: TrainConfig, split: SplitManifest, data_dir: Path, run_dir: Path, device: torch.device, log: Log
) -> dict[str, Any]:
    best_path = run_dir / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(best_path)
    model = build_model(config.model.spec())
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()

    pre = Preprocessor(config.preprocessing)
    positive = config.decision.positive_label
    scored: dict[str, tuple[np.ndarray, np.ndarray, float, list[Any]]] = {}
    names: tuple[Split, Split] = ("val", "test")
    for name in names:
        ds = ImageDataset(data_dir, split.select(name), pre, positive)
        z, t, loss = evaluate(model, eval_loader(ds, config.optim.batch_size, config.loader.workers), device)
        scored[name] = (z, t, loss, ds.items)

    # The checkpoint is chosen; now calibrate on validation and choose the operating point
    # for the deployment damage rate. The test split is touched once, below.
    dc = config.decision
    vz, vt, _, _ = scored["val"]
    calibration_map = calibration.fit_checked(vz, vt, dc.calibration)
    spec, val_figures = choose_operating_point(vz, vt, dc, calibration_map)

    results: dict[str, dict[str, Any]] = {}
    predictions: dict[str, list[dict[str, Any]]] = {}
    quality: dict[str, dict[str, float]] = {}
    for name in names:
        z, t, _, items = scored[name]
        raw, served_p = uncalibrated_probabilities(z), served(z, spec)
        # One definition of every figure (training.operating_point.split_figures), on the served
        # probabilities, so `evaluate` on the bundle prints these very numbers.
        results[name] = val_figures if name == "val" else split_figures(name, served_p, t, spec)
        quality[name] = {
            "ece_before": calibration.expected_calibration_error(raw, t),
            "ece_after": results[name][f"{name}_ece"],
            "log_loss_before": calibration.log_loss(raw, t),
            "log_loss_after": results[name][f"{name}_log_loss"],
        }
        predictions[name] = [
            {"path": item.path, "label": item.label, "logit": float(logit), "probability": float(p)}
            for item, logit, p in zip(items, z, served_p, strict=True)
        ]
    counts = summary(split)
    warnings = list(dict.fromkeys(spec.warnings + results["test"]["warnings"]))
    evaluation = {
        "best_epoch": ckpt["epoch"],
        "checkpoint_sha256": file_sha256(best_path),
        "threshold": spec.threshold,
        "method": dc.method,
        "decision": spec.model_dump(mode="json", exclude={"validation_scores"}),
        "prevalence": {"validation": spec.validation_prevalence, "deployment": spec.deployment_prevalence},
        "data": {"counts": counts, "allow_small": config.data.allow_small},
        "warnings": warnings,
        "intervals": INTERVALS,
        "calibration": {
            **spec.calibration.model_dump(),
            **{f"{n}_{k}": v for n, q in quality.items() for k, v in q.items()},
        },
        "validation": results["val"],
        "test": results["test"],
        "predictions": predictions,
    }
    (run_dir / "eval.json").write_text(json.dumps(evaluation, indent=1) + "\n")
    for line in summary_lines(evaluation):
        log(line)
    report = write_report(run_dir, data_dir, config, model)
    log(f"report: {report}")
    return evaluation
