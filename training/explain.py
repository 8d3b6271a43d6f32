"""Are the heatmaps right? Pointing accuracy against where `synth` drew the damage.

For each damaged image with recorded damage boxes (`training.synth.REGIONS_FILE`), the
explanation (`model_store.explain`, the service's own code) points at its heatmap's
maximum; a hit is a point inside a damage box. The baseline is what pointing at random
inside the part of the image the model sees would score: the share of that part the
damage covers, averaged over the same images. A heatmap worth showing beats it clearly.

`python -m training explain-eval --bundle B --data D --public-key K` prints both (and the
time per image) for one method or every one; docs/explanations.md has the figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from model_store.bundle import load_bundle
from model_store.explain import METHODS, Explanation, Method, explain
from model_store.predictor import SERVING_THREADS, Predictor, torch_threads
from training.data import DataError, Split
from training.evaluate import split_items
from training.metrics import wilson
from training.synth import REGIONS_FILE, Box, read_regions


@dataclass(frozen=True)
class Pointing:
    method: Method
    images: int  # damaged images with recorded boxes
    hits: int
    baseline: float  # mean share of the seen area that the damage covers
    seconds_per_image: float  # one explanation, single-threaded as the service's workers run

    @property
    def accuracy(self) -> float:
        return self.hits / self.images if self.images else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "images": self.images,
            "hits": self.hits,
            "pointing_accuracy": self.accuracy,
            "interval": list(wilson(self.hits, self.images)) if self.images else None,  # 95%
            "baseline": self.baseline,
            "seconds_per_image": self.seconds_per_image,
        }


def hit(explanation: Explanation, boxes: list[Box]) -> bool:
    """The heatmap's maximum lies inside one of the damage boxes (image pixels)."""
    x, y = explanation.peak()
    return any(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in boxes)


def seen_share(explanation: Explanation, boxes: list[Box]) -> float:
    """The share of the image's seen part (the model's input) that the damage boxes cover:
    the chance that a point drawn at random there is a hit. Rasterised at 1 px, so
    overlapping boxes count once."""
    left, top, right, bottom = explanation.seen
    x0, y0 = max(0, int(left)), max(0, int(top))
    x1, y1 = min(explanation.width, int(np.ceil(right))), min(explanation.height, int(np.ceil(bottom)))
    if x1 <= x0 or y1 <= y0:
        return 0.0
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for bx0, by0, bx1, by1 in boxes:
        c0, c1 = max(0, round(bx0) - x0), min(x1 - x0, round(bx1) - x0)
        r0, r1 = max(0, round(by0) - y0), min(y1 - y0, round(by1) - y0)
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = True
    return float(mask.mean())


def pointing(
    predictor: Predictor, root: Path, regions: dict[str, list[Box]], names: list[str], method: Method
) -> Pointing:
    """Pointing accuracy of `method` over the images `names` (paths under `root` that have boxes)."""
    hits, shares, seconds = 0, [], 0.0
    with torch_threads(SERVING_THREADS):  # timed as a worker runs it
        for name in names:
            data = (root / name).read_bytes()
            started = time.perf_counter()
            e = explain(predictor, data, method)
            seconds += time.perf_counter() - started
            hits += hit(e, regions[name])
            shares.append(seen_share(e, regions[name]))
    n = len(names)
    return Pointing(method, n, hits, float(np.mean(shares)) if shares else 0.0, seconds / n if n else 0.0)


def explain_eval(
    bundle_dir: Path,
    public_key: Path,
    data_dir: Path,
    split: Split | Literal["all"] = "test",
    methods: tuple[Method, ...] = METHODS,
    limit: int | None = None,
) -> dict[str, Any]:
    """Pointing accuracy and its baseline for each of `methods`, on the damaged images of
    `split` (the bundle's own split, refused on other data, or `all`). `limit`: the first
    that many damaged images only (a quicker look)."""
    bundle = load_bundle(bundle_dir, public_key)
    try:
        regions = read_regions(Path(data_dir))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise DataError(f"{Path(data_dir) / REGIONS_FILE} is not a damage regions file ({exc})") from None
    if regions is None:
        raise DataError(
            f"{data_dir} has no {REGIONS_FILE}: pointing accuracy needs to know where the damage is "
            "(data from `python -m training synth` records it)"
        )
    positive = bundle.manifest.decision.positive_label
    items = split_items(bundle, data_dir, split)
    names = [i.path for i in items if i.label == positive and regions.get(i.path)]
    if not names:
        raise DataError(f"no damaged image of the {split} split has recorded damage regions")
    names = names[:limit] if limit else names
    predictor = Predictor(bundle)
    results = [pointing(predictor, Path(data_dir), regions, names, m).as_dict() for m in methods]
    return {"version": bundle.version, "split": split, "results": results}
