"""After the last epoch: evaluate the best checkpoint, choose the threshold, report.

The threshold is chosen on the validation split only; the test split is touched once,
here, and its metrics are reported at that threshold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from model_store.preprocessing import Preprocessor
from model_store.zoo import build_model
from training import metrics as M
from training.checkpoint import file_sha256, load_checkpoint
from training.config import TrainConfig
from training.data import ImageDataset, Split, SplitManifest
from training.loops import eval_loader, evaluate
from training.progress import Log
from training.report import write_report


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
    results: dict[str, Any] = {}
    predictions: dict[str, list[dict[str, Any]]] = {}
    names: tuple[Split, Split] = ("val", "test")
    for name in names:
        ds = ImageDataset(data_dir, split.select(name), pre, positive)
        p, t, loss = evaluate(model, eval_loader(ds, config.optim.batch_size, config.loader.workers), device)
        results[name] = (p, t, M.ranking_metrics(name, p, t, loss))
        predictions[name] = [
            {"path": item.path, "label": item.label, "probability": float(prob)}
            for item, prob in zip(ds.items, p, strict=True)
        ]

    dc = config.decision
    vp, vt, vmetrics = results["val"]
    op = M.choose_threshold(
        vp,
        vt,
        method=dc.method,
        cost_false_alarm=dc.cost_false_alarm,
        cost_miss=dc.cost_miss,
        target_recall=dc.target_recall,
    )
    tp_, tt, tmetrics = results["test"]
    test_op = M.at_threshold(tp_, tt, op.threshold, dc.cost_false_alarm, dc.cost_miss)
    evaluation = {
        "best_epoch": ckpt["epoch"],
        "checkpoint_sha256": file_sha256(best_path),
        "threshold": op.threshold,
        "method": dc.method,
        "validation": {**vmetrics, "at_threshold": op.as_dict()},
        "test": {**tmetrics, "at_threshold": test_op.as_dict()},
        "predictions": predictions,
    }
    (run_dir / "eval.json").write_text(json.dumps(evaluation, indent=1) + "\n")
    log(
        f"best epoch {ckpt['epoch']}; threshold {op.threshold:.4f} ({dc.method}, "
        f"false alarm {dc.cost_false_alarm:g} vs miss {dc.cost_miss:g}); "
        f"test: recall {test_op.recall:.3f} precision {test_op.precision:.3f} "
        f"fpr {test_op.false_positive_rate:.3f} acc {test_op.accuracy:.3f} "
        f"roc_auc {tmetrics['test_roc_auc']:.3f} cost/parcel {test_op.expected_cost:.3f}"
    )
    report = write_report(run_dir, data_dir, config)
    log(f"report: {report}")
    return evaluation
