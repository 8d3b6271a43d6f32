"""Is a split big enough for the figures training prints? The one "too few images" rule.

A rate measured on n images (recall on the damaged ones, the false-alarm rate on the
intact ones) is known to about ±0.98/sqrt(n) at 95% in the worst case: ±0.22 on 20
images, ±0.14 on 50, ±0.49 on 4. So, per class, in the validation and the test split:

- fewer than `REFUSE_BELOW`: training refuses before it starts, naming how many photos
  per class would do, unless `data.allow_small` (`--allow-small-data`) says to go on;
- fewer than `WARN_BELOW`: it warns, and the warning travels to the report, `eval.json`
  and the bundle's manifest.

`train` applies it to the split before the first epoch; `decide` applies it to the
validation scores a threshold is chosen on (so `redecide` says it too); `finalize` to test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

REFUSE_BELOW = 20
WARN_BELOW = 50
CHECKED_SPLITS = ("val", "test")


def half_width(n: int) -> float:
    """Worst-case half-width of a 95% interval of a rate measured on n images."""
    return 1.96 * math.sqrt(0.25 / n) if n else 1.0


def photos_needed(per_split: int, fraction: float) -> int:
    """Photos of one class for `round(n * fraction)` (the split's rule) to reach `per_split`."""
    return math.ceil((per_split - 0.5) / fraction)


def describe(counts: Mapping[str, Mapping[str, int]]) -> str:
    """`train intact 21 damaged 21 | val intact 5 damaged 4 | test ...`: images per class per split."""
    return " | ".join(f"{split} " + " ".join(f"{lbl} {n}" for lbl, n in per.items()) for split, per in counts.items())


def sample_warning(what: str, counts: Mapping[str, int]) -> str | None:
    """One warning line when a class in `what` has fewer than `WARN_BELOW` images."""
    n = min(counts.values()) if counts else 0
    if n >= WARN_BELOW:
        return None
    held = " and ".join(f"{c} {label}" for label, c in counts.items())
    advice = (
        f"below {REFUSE_BELOW} per class training refuses unless data.allow_small"
        if n < REFUSE_BELOW
        else f"{WARN_BELOW} per class make them usable"
    )
    return (
        f"{what} holds {held} images: a rate on {n} images is known only to ±{half_width(n):.2f} (95%), "
        f"so read its figures by their intervals; {advice}"
    )


def check_split(
    counts: Mapping[str, Mapping[str, int]], val_fraction: float, test_fraction: float
) -> tuple[str | None, list[str]]:
    """(refusal, warnings) for a split's per-class counts ({"train": {"intact": 21, ...}, ...})."""
    small = {
        split: dict(counts[split]) for split in CHECKED_SPLITS if min(counts[split].values(), default=0) < REFUSE_BELOW
    }
    refusal = None
    if small:
        fraction = min(val_fraction, test_fraction)
        held = "; ".join(f"{s} has " + ", ".join(f"{n} {lbl}" for lbl, n in per.items()) for s, per in small.items())
        refusal = (
            f"too few images for the figures training prints: {held}. At least {REFUSE_BELOW} of each class are "
            f"needed in val and in test (a rate on {REFUSE_BELOW} images is known to ±{half_width(REFUSE_BELOW):.2f} "
            f"at 95%), about {photos_needed(REFUSE_BELOW, fraction)} photos per class at data.val_fraction "
            f"{val_fraction:g} and data.test_fraction {test_fraction:g}. Add photos, or pass --allow-small-data "
            "(data.allow_small = true) to train anyway with every figure marked"
        )
    warnings = [w for split in CHECKED_SPLITS if (w := sample_warning(f"the {split} split", counts[split]))]
    train = counts.get("train", {})
    if train and min(train.values()) == 0:
        empty = [lbl for lbl, n in train.items() if n == 0]
        refusal = refusal or f"the train split has no {' or '.join(empty)} images: nothing to learn that class from"
    return refusal, warnings
