"""Metrics of a signed bundle on a data set, through the serving `Predictor`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from model_store.bundle import Bundle, load_bundle
from model_store.predictor import Predictor
from training.data import DataError, Item, Split, make_split, scan
from training.operating_point import split_figures


def evaluate_bundle(
    bundle_dir: Path,
    public_key: Path,
    data_dir: Path,
    split: Split | Literal["all"] = "test",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """`split="test"` rebuilds the training split and refuses data that differs from it;
    `split="all"` evaluates every image (a new data set, e.g. real photos)."""
    bundle = load_bundle(bundle_dir, public_key)
    m = bundle.manifest
    items = split_items(bundle, data_dir, split)
    batch_size = batch_size or int(m.lineage.config.get("optim", {}).get("batch_size", 32))
    predictor = Predictor(bundle)
    p = np.array([o.probability for o in predictor.predict_files([Path(data_dir) / i.path for i in items], batch_size)])
    t = np.array([int(i.label == m.decision.positive_label) for i in items])
    # The one definition training's eval.json uses: counts at this data set's own damage
    # rate, every cost at the bundle's deployment rate, intervals seeded alike.
    return {"version": m.version, "split": split, **split_figures(split, p, t, m.decision)}


def split_items(bundle: Bundle, data_dir: Path, split: Split | Literal["all"]) -> list[Item]:
    """The images of `split` as the bundle's training run split `data_dir` (refused when the
    data differs from it), or every image (`all`: a new data set, e.g. real photos)."""
    m = bundle.manifest
    labels = (m.decision.negative_label, m.decision.positive_label)
    if split == "all":
        return [Item(p, d, lbl, "test") for p, d, lbl in scan(data_dir, labels)]
    data_cfg = m.lineage.config["data"]
    manifest = make_split(data_dir, labels, m.lineage.seed, data_cfg["val_fraction"], data_cfg["test_fraction"])
    if manifest.sha256 != m.lineage.split_manifest_sha256:
        raise DataError(
            f"{data_dir} is not the data set {m.version} was trained on (split manifest differs); "
            "use --split all to evaluate on other data"
        )
    return manifest.select(split)
