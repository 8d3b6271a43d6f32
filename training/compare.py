"""Two signed bundles on the same images, offline: where do they decide differently?

`python -m training compare --bundle A --bundle B --images DIR` writes `compare.html` (the
agreement, every flip with a thumbnail and both probabilities), `scatter.png` (B's score
against A's) and `summary.json`. When DIR is in ImageFolder layout (a folder per label),
both bundles' metrics at their own thresholds are added. The `HEATMAPS` flips whose
probability moved most also get each bundle's heatmap (`model_store.explain`, as
`POST /v1/explain` draws it): where each model saw the evidence it decided on.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image, ImageOps

from model_store.bundle import load_bundle
from model_store.explain import explain, overlay_png
from model_store.predictor import Predictor
from training.data import IMAGE_SUFFIXES
from training.operating_point import split_figures

BATCH = 32
HEATMAPS = 8  # flips explained by both bundles: each explanation is ~50 forward passes
HEATMAP_SIDE = 240  # pixels, the longer side of each heatmap image on the page


@dataclass(frozen=True)
class ComparedImage:
    path: str  # relative to the image folder
    label: str | None
    a: float
    b: float


def _images(root: Path, labels: tuple[str, str]) -> list[tuple[str, str | None]]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no JPEG, PNG or WebP images under {root}")
    out = []
    for p in files:
        rel = p.relative_to(root)
        label = rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in labels else None
        out.append((rel.as_posix(), label))
    return out


def _probabilities(predictor: Predictor, root: Path, paths: list[str]) -> list[float]:
    return [o.probability for o in predictor.predict_files([root / p for p in paths], BATCH)]


def compare(a_dir: Path, b_dir: Path, public_key: Path, images: Path, out: Path) -> dict[str, Any]:
    a, b = load_bundle(a_dir, public_key), load_bundle(b_dir, public_key)
    da, db = a.manifest.decision, b.manifest.decision
    labels = (da.negative_label, da.positive_label)
    found = _images(images, labels)
    paths = [p for p, _ in found]
    predictor_a, predictor_b = Predictor(a), Predictor(b)
    pa, pb = _probabilities(predictor_a, images, paths), _probabilities(predictor_b, images, paths)
    rows = [ComparedImage(p, lbl, x, y) for (p, lbl), x, y in zip(found, pa, pb, strict=True)]
    flips = [r for r in rows if da.decide(r.a) != db.decide(r.b)]
    out.mkdir(parents=True, exist_ok=True)
    heatmaps = _heatmaps(flips, predictor_a, predictor_b, images, out / "heatmaps")
    summary: dict[str, Any] = {
        "a": {"version": a.version, "manifest_sha256": a.manifest_sha256, "threshold": da.threshold},
        "b": {"version": b.version, "manifest_sha256": b.manifest_sha256, "threshold": db.threshold},
        "images": len(rows),
        "agreement": 1 - len(flips) / len(rows),
        "flips": {
            f"{da.negative_label}_to_{db.positive_label}": sum(db.decide(r.b) == db.positive_label for r in flips),
            f"{da.positive_label}_to_{db.negative_label}": sum(db.decide(r.b) == db.negative_label for r in flips),
        },
        "mean_abs_probability_diff": float(np.mean([abs(r.a - r.b) for r in rows])),
        "flipped": [{"path": r.path, "label": r.label, "a": r.a, "b": r.b} for r in flips],
    }
    labelled = [r for r in rows if r.label is not None]
    if labelled and {r.label for r in labelled} == set(labels):
        y = np.array([int(r.label == da.positive_label) for r in labelled])
        for key, bundle, scores in (("a", a, [r.a for r in labelled]), ("b", b, [r.b for r in labelled])):
            # The figures `evaluate` prints (training.operating_point.split_figures), with their intervals.
            figures = split_figures("images", scores, y, bundle.manifest.decision)
            summary[key]["metrics"] = {
                **figures["at_threshold"],
                "roc_auc": figures["images_roc_auc"],
                "ece": figures["images_ece"],
                "intervals": figures["intervals"],
            }
    summary["heatmaps"] = len(heatmaps)
    _scatter(rows, summary, out / "scatter.png")
    _page(rows, flips, summary, images, out, heatmaps)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _heatmaps(
    flips: list[ComparedImage], a: Predictor, b: Predictor, images: Path, folder: Path
) -> dict[str, tuple[str, str]]:
    """Each bundle's heatmap overlay for the `HEATMAPS` flips whose probability moved most:
    {image path: (A's file, B's file)}, files under `folder`."""
    chosen = sorted(flips, key=lambda r: abs(r.a - r.b), reverse=True)[:HEATMAPS]
    if chosen:
        folder.mkdir(exist_ok=True)
    out = {}
    for i, r in enumerate(chosen):
        data = (images / r.path).read_bytes()
        names = []
        for key, predictor in (("a", a), ("b", b)):
            name = f"{i:04d}-{key}.png"
            png = overlay_png(predictor.preprocessor, data, explain(predictor, data), HEATMAP_SIDE)
            (folder / name).write_bytes(png)
            names.append(f"{folder.name}/{name}")
        out[r.path] = (names[0], names[1])
    return out


def _scatter(rows: list[ComparedImage], summary: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for label in sorted({r.label or "unlabelled" for r in rows}):
        pts = [r for r in rows if (r.label or "unlabelled") == label]
        ax.scatter([r.a for r in pts], [r.b for r in pts], s=10, alpha=0.6, label=label)
    ax.axvline(summary["a"]["threshold"], color="grey", ls=":")
    ax.axhline(summary["b"]["threshold"], color="grey", ls=":")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
    ax.set(
        xlabel=f"{summary['a']['version']} probability",
        ylabel=f"{summary['b']['version']} probability",
        title=f"{summary['images']} images, agreement {summary['agreement']:.1%}",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _page(
    rows: list[ComparedImage],
    flips: list[ComparedImage],
    summary: dict[str, Any],
    images: Path,
    out: Path,
    heatmaps: dict[str, tuple[str, str]],
) -> None:
    thumbs = out / "thumbs"
    thumbs.mkdir(exist_ok=True)
    cells, explained = [], []
    va, vb = html.escape(summary["a"]["version"]), html.escape(summary["b"]["version"])
    for i, r in enumerate(flips):
        name = f"{i:04d}.jpg"
        with Image.open(images / r.path) as img:
            thumb = ImageOps.exif_transpose(img).convert("RGB")
            thumb.thumbnail((160, 160))
            thumb.save(thumbs / name, quality=85)
        caption = f"{html.escape(r.path)}<br>{va}: {r.a:.3f} &rarr; {vb}: {r.b:.3f}" + (
            f"<br>label: {html.escape(r.label)}" if r.label else ""
        )
        alt = html.escape(r.path)
        cells.append(f"<figure><img src='thumbs/{name}' alt='{alt}'><figcaption>{caption}</figcaption></figure>")
        if r.path in heatmaps:
            ha, hb = heatmaps[r.path]
            explained.append(
                f"<figure class='pair'><img src='{ha}' alt='{va} heatmap'><img src='{hb}' alt='{vb} heatmap'>"
                f"<figcaption>{caption}<br>left {va}, right {vb}</figcaption></figure>"
            )
    metrics = ""
    if "metrics" in summary["a"]:
        head = "".join(
            f"<th>{k}</th>" for k in ("recall", "precision", "false_positive_rate", "roc_auc", "expected_cost")
        )

        def cell(m: dict[str, Any], name: str) -> str:
            lo, hi = m["intervals"][name]
            return f"<td>{m[name]:.3f}<br><small>{lo:.3f}&ndash;{hi:.3f}</small></td>"

        body = "".join(
            f"<tr><td>{summary[k]['version']}</td>"
            + "".join(
                cell(summary[k]["metrics"], m)
                for m in ("recall", "precision", "false_positive_rate", "roc_auc", "expected_cost")
            )
            + "</tr>"
            for k in ("a", "b")
        )
        rate = summary["a"]["metrics"]["damage_rate"]
        metrics = (
            f"<h2>Metrics at each bundle's own threshold</h2><p>95% intervals below each figure; cost per parcel "
            f"at {rate:.1%} damaged, precision at these images' own rate.</p>"
            f"<table><tr><th></th>{head}</tr>{body}</table>"
        )
    counts = ", ".join(f"{html.escape(k)}: {v}" for k, v in summary["flips"].items())
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "figure{display:inline-block;margin:6px;width:170px;font-size:12px}td,th{padding:4px 10px;text-align:right}"
        "figure.pair{width:500px}figure.pair img{width:240px;margin-right:6px}"
    )
    heat = (
        f"<h2>Where each model saw damage ({len(explained)} flip(s) that moved most)</h2><p>Occlusion heatmaps, as "
        "<code>POST /v1/explain</code> draws them: red to yellow where covering the image lowers that model's "
        f"damage score most (relative to each image); darkened: cropped away, never seen.</p>{''.join(explained)}"
        if explained
        else ""
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Compare {va} and {vb}</title>"
        f"<style>{style}</style></head><body>\n<h1>{va} vs {vb}</h1>\n"
        f"<p>{summary['images']} images; the two decide alike on {summary['agreement']:.1%}; {len(flips)} flip(s) "
        f"({counts}); mean |&Delta;p| {summary['mean_abs_probability_diff']:.4f}.</p>\n{metrics}\n"
        f"<h2>Scores</h2><img src='scatter.png' alt='score scatter'>\n"
        f"<h2>Flips</h2>{''.join(cells) or '<p>none</p>'}\n{heat}\n</body></html>\n"
    )
    (out / "compare.html").write_text(page)
