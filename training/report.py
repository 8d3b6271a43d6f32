"""`report.html` with PNG plots: curves, ROC, PR, cost vs threshold, confusion, worst errors, and
where the model saw damage on the worst of them (heatmaps, as `POST /v1/explain` draws them)."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image, ImageOps
from torch import nn

from model_store.explain import explain_model, overlay_png
from model_store.manifest import DecisionSpec
from model_store.preprocessing import Preprocessor
from training import calibration
from training import metrics as M
from training.config import TrainConfig
from training.loops import uncalibrated_probabilities
from training.operating_point import served


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def _arrays(rows: list[dict[str, Any]], positive: str) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.array([r["probability"] for r in rows]),
        np.array([int(r["label"] == positive) for r in rows]),
    )


WORST_ERRORS = 12  # test errors shown, farthest from the threshold first
HEATMAPS = 8  # of those, explained: each explanation is ~50 forward passes


def _heatmaps(
    rows: list[dict[str, Any]], data_dir: Path, config: TrainConfig, model: nn.Module, threshold: float, path: Path
) -> str:
    """A grid of heatmap overlays (`model_store.explain`, the service's code) for `rows` of the
    test predictions, with their served probabilities."""
    pre = Preprocessor(config.preprocessing)
    dc = config.decision
    cols = 4
    fig, axes = plt.subplots((len(rows) + cols - 1) // cols, cols, figsize=(12, 2.6 * ((len(rows) + cols - 1) // cols)))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, r in zip(np.atleast_1d(axes).ravel(), rows, strict=False):
        data = (data_dir / r["path"]).read_bytes()
        decision = dc.positive_label if r["probability"] >= threshold else dc.negative_label
        e = explain_model(
            model,
            config.model.architecture,
            pre,
            data,
            probability=r["probability"],
            decision=decision,
        )
        ax.imshow(Image.open(io.BytesIO(overlay_png(pre, data, e, 320))))
        ax.set_title(f"{r['label']}  p={r['probability']:.3f}", fontsize=9)
    return _save(fig, path)


def write_report(run_dir: Path, data_dir: Path, config: TrainConfig, model: nn.Module | None = None) -> Path:
    """`model`: the chosen checkpoint's, to draw heatmaps on the worst errors (none without)."""
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ev = json.loads((run_dir / "eval.json").read_text())
    dc = config.decision
    vp, vt = _arrays(ev["predictions"]["val"], dc.positive_label)
    tp, tt = _arrays(ev["predictions"]["test"], dc.positive_label)
    t = ev["threshold"]
    images: list[tuple[str, str]] = []

    epochs = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    a.plot(epochs, [r["val_loss"] for r in rows], "o-", label="validation")
    a.axvline(ev["best_epoch"], color="grey", ls=":", label="best checkpoint")
    a.set(xlabel="epoch", ylabel="BCE loss", title="Loss")
    a.legend()
    for key, label in (
        ("val_accuracy", "accuracy@0.5"),
        ("val_roc_auc", "ROC-AUC"),
        ("val_pr_auc", "PR-AUC"),
    ):
        b.plot(epochs, [r[key] for r in rows], "o-", label=label)
    b.set(xlabel="epoch", title="Validation metrics", ylim=(0, 1.02))
    b.legend()
    images.append(("Training curves", _save(fig, plots / "curves.png")))

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, p, y in (("validation", vp, vt), ("test", tp, tt)):
        fpr, tpr = M.roc_curve(p, y)
        a.plot(fpr, tpr, label=f"{name} (AUC {M.roc_auc(p, y):.3f})")
        rec, prec = M.pr_curve(p, y)
        b.plot(rec, prec, label=f"{name} (AP {M.average_precision(p, y):.3f})")
    op = ev["test"]["at_threshold"]
    a.plot([op["false_positive_rate"]], [op["recall"]], "k*", ms=12, label=f"test @ threshold {t:.3f}")
    a.plot([0, 1], [0, 1], color="grey", ls=":")
    a.set(xlabel="false positive rate", ylabel="true positive rate (recall)", title="ROC")
    a.legend(loc="lower right")
    b.plot([op["recall"]], [op["precision"]], "k*", ms=12, label="test @ threshold")
    b.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    b.legend(loc="lower left")
    images.append(("ROC and precision-recall", _save(fig, plots / "roc_pr.png")))

    rates = ev["prevalence"]
    validation_rate, deployment_rate = rates["validation"], rates["deployment"] or rates["validation"]
    fig, a = plt.subplots(figsize=(7.5, 3.8))
    for rate, name, style in ((validation_rate, "validation split", ":"), (deployment_rate, "deployment", "-")):
        ts, costs = M.cost_curve(vp, vt, dc.cost_false_alarm, dc.cost_miss, rate)
        a.plot(ts, costs, style, label=f"{name}: {rate:.1%} damaged")
    a.axvline(t, color="k", ls="--")
    chosen = M.at_threshold(vp, vt, t, dc.cost_false_alarm, dc.cost_miss, deployment_rate).expected_cost
    a.plot([t], [chosen], "ro", label=f"chosen {t:.3f} ({chosen:.3f} per parcel)")
    a.set(
        xlabel="threshold on the served probability",
        ylabel="expected cost per parcel",
        title=f"Cost: false alarm {dc.cost_false_alarm:g}, miss {dc.cost_miss:g} ({ev['method']})",
    )
    a.legend(fontsize=8)
    images.append(("Expected cost versus threshold, at both damage rates", _save(fig, plots / "cost.png")))

    cal = ev["calibration"]
    spec = DecisionSpec.model_validate(ev["decision"]).model_copy(update={"deployment_prevalence": None})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, split in zip(axes, ("val", "test"), strict=True):
        rows_ = ev["predictions"][split]
        z = np.array([r["logit"] for r in rows_])
        y = np.array([int(r["label"] == dc.positive_label) for r in rows_])
        for probs, name in ((uncalibrated_probabilities(z), "before"), (served(z, spec), f"after ({cal['method']})")):
            bins = calibration.reliability(probs, y)
            ece = calibration.expected_calibration_error(probs, y)
            ax.plot([c for c, _, _ in bins], [r for _, r, _ in bins], "o-", label=f"{name}: ECE {ece:.3f}")
        ax.plot([0, 1], [0, 1], color="grey", ls=":")
        ax.set(xlabel="predicted probability", ylabel="observed damage rate", title=f"Reliability, {split}")
        ax.legend(fontsize=8)
    images.append(("Calibration (reliability diagram)", _save(fig, plots / "reliability.png")))

    cm = np.array([[op["tn"], op["fp"]], [op["fn"], op["tp"]]])
    fig, a = plt.subplots(figsize=(4.2, 3.8))
    a.imshow(cm, cmap="Blues")
    labels = [dc.negative_label, dc.positive_label]
    a.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=labels,
        yticklabels=labels,
        xlabel="predicted",
        ylabel="actual",
        title=f"Test confusion @ {t:.3f}",
    )
    for (i, j), v in np.ndenumerate(cm):
        a.text(
            j,
            i,
            str(v),
            ha="center",
            va="center",
            color="white" if v > cm.max() / 2 else "black",
            fontsize=14,
        )
    images.append(("Test confusion matrix", _save(fig, plots / "confusion.png")))

    errors = [r for r in ev["predictions"]["test"] if (r["probability"] >= t) != (r["label"] == dc.positive_label)]
    errors.sort(key=lambda r: abs(r["probability"] - t), reverse=True)
    worst = errors[:WORST_ERRORS]
    if worst:
        cols = 4
        fig, axes = plt.subplots((len(worst) + cols - 1) // cols, cols, figsize=(12, 2.6 * ((len(worst) + 3) // 4)))
        for ax in np.atleast_1d(axes).ravel():
            ax.axis("off")
        for ax, r in zip(np.atleast_1d(axes).ravel(), worst, strict=False):
            img = ImageOps.exif_transpose(Image.open(data_dir / r["path"])).convert("RGB")
            ax.imshow(img)
            ax.set_title(f"{r['label']}  p={r['probability']:.3f}", fontsize=9)
        images.append((f"Worst test errors ({len(errors)} in all)", _save(fig, plots / "worst_errors.png")))
    if worst and model is not None:
        title = (
            f"Where the model saw damage on the {min(len(worst), HEATMAPS)} worst errors (occlusion heatmaps: "
            "red to yellow where covering the photo lowers the damage score most; darkened: cropped away)"
        )
        drawn = _heatmaps(worst[:HEATMAPS], data_dir, config, model, t, plots / "worst_errors_heatmaps.png")
        images.append((title, drawn))

    def cell(value: float, interval: list[float] | None) -> str:
        if not interval:
            return f"<td>{value:.3f}</td>"
        return f"<td>{value:.3f}<br><small>{interval[0]:.3f}&ndash;{interval[1]:.3f}</small></td>"

    rows_html = []
    for name, key, pre in (("validation", "validation", "val"), ("test", "test", "test")):
        m, ci = ev[key]["at_threshold"], ev[key].get("intervals", {})
        held = " / ".join(str(v) for v in ev[key].get("counts", {}).values())
        rows_html.append(
            f"<tr><td>{name}</td>{cell(m['recall'], ci.get('recall'))}"
            f"{cell(m['false_positive_rate'], ci.get('false_positive_rate'))}"
            f"{cell(m['precision'], ci.get('precision'))}"
            f"{cell(m['expected_cost'], ci.get('expected_cost'))}{cell(ev[key][f'{pre}_roc_auc'], ci.get('roc_auc'))}"
            f"{cell(ev[key][f'{pre}_ece'], ci.get('ece'))}<td>{ev[key][f'{pre}_pr_auc']:.3f}</td>"
            f"<td>{m['n']}<br><small>{held}</small></td></tr>"
        )
    table = "".join(rows_html)
    counts = ev.get("data", {}).get("counts", {})
    count_rows = "".join(
        f"<tr><td>{k}</td>" + "".join(f"<td>{n}</td>" for n in per.values()) + "</tr>" for k, per in counts.items()
    )
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in ev.get("warnings", []))
    warning_box = (
        f"<div style='border:2px solid #c00;padding:0 1em;margin:1em 0'><h2>Read these figures with care</h2>"
        f"<ul>{warnings}</ul></div>"
        if warnings
        else ""
    )
    calibration_rows = "".join(
        f"<tr><td>{name}</td><td>{cal[f'{key}_ece_before']:.3f}</td><td>{cal[f'{key}_ece_after']:.3f}</td>"
        f"<td>{cal[f'{key}_log_loss_before']:.3f}</td><td>{cal[f'{key}_log_loss_after']:.3f}</td></tr>"
        for name, key in (("validation", "val"), ("test", "test"))
    )
    body = "\n".join(
        f"<h2>{html.escape(title)}</h2><img src='plots/{name}' alt='{html.escape(title)}'>" for title, name in images
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Training report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:4px 10px;text-align:right}}
img{{max-width:100%}}</style></head><body>
<h1>Training report: {html.escape(config.model.architecture)}</h1>
<p>Best checkpoint: epoch {ev["best_epoch"]} (sha256 {ev["checkpoint_sha256"][:16]}&hellip;).
Threshold <b>{t:.4f}</b> chosen on validation by {html.escape(ev["method"])}
(false alarm cost {dc.cost_false_alarm:g}, miss cost {dc.cost_miss:g}) for a damage rate of
{deployment_rate:.1%} in production (validation split: {validation_rate:.1%}); expected cost there
{chosen:.3f} per parcel.</p>
{warning_box}
<h2>Images per class</h2>
<table><tr><th></th>{"".join(f"<th>{html.escape(lbl)}</th>" for lbl in labels)}</tr>{count_rows}</table>
<h2>At the threshold</h2>
<p>Every cost is per parcel at the deployment rate, {deployment_rate:.1%} damaged; precision is at each
split's own rate. Below each figure, its 95% interval (a seeded bootstrap over the split, at least the
Wilson interval for rates: see docs/decisions.md). The validation row is where the threshold was
chosen, so it flatters; the test row is not.</p>
<table><tr><th></th><th>recall</th><th>false positive rate</th><th>precision</th>
<th>cost/parcel at {deployment_rate:.1%}</th><th>ROC-AUC</th><th>ECE</th><th>PR-AUC</th>
<th>n<br><small>{" / ".join(html.escape(lbl) for lbl in labels)}</small></th></tr>{table}</table>
<h2>Calibration ({html.escape(cal["method"])}, slope {cal["slope"]:.3f}, intercept {cal["intercept"]:.3f})</h2>
<table><tr><th></th><th>ECE before</th><th>ECE after</th><th>log loss before</th><th>log loss after</th></tr>
{calibration_rows}</table>
{body}
</body></html>
"""
    out = run_dir / "report.html"
    out.write_text(page)
    return out
