"""Progress output: one place decides between a live bar and plain lines.

A terminal gets a tqdm bar per epoch; a file or pipe (CI, `make demo | tee`) gets no bar,
only the one summary line per epoch, so logs never fill with carriage returns.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

Log = Callable[[str], None]
T = TypeVar("T")


def log_stderr(message: str) -> None:
    """Progress lines on stderr, printed around any active progress bar."""
    tqdm.write(message, file=sys.stderr)


def progress(items: Iterable[T], *, desc: str, enabled: bool = True) -> Iterator[T]:
    """Iterate with a live bar when stderr is a terminal; silently otherwise."""
    if not (enabled and sys.stderr.isatty()):
        yield from items
        return
    yield from tqdm(items, desc=desc, unit="batch", leave=False, file=sys.stderr, mininterval=0.5)


# The lines a run prints. The README's demo block (scripts/update_readme_demo.py) renders
# the same lines from a finished run directory, so both read alike and come from one place.


def data_line(split_summary: dict[str, Any], split_sha256: str) -> str:
    return f"data: {json.dumps(split_summary)}  split sha256 {split_sha256[:12]}"


def epoch_line(row: dict[str, Any], epochs: int, improved: bool) -> str:
    """One epoch of `metrics.jsonl` as the run prints it."""
    return (
        f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.3f}  "
        f"val_auc {row['val_roc_auc']:.3f}  {row['train_images_per_s']:.0f} img/s" + ("  *best" if improved else "")
    )


def _figure(name: str, value: float, interval: list[float] | None) -> str:
    return f"{name} {value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def figures_line(prefix: str, figures: dict[str, Any]) -> str:
    """A split's headline figures at the threshold, each with its 95% interval, and the
    damage rate the cost is at (`training.operating_point.split_figures`)."""
    op, ci, counts = figures["at_threshold"], figures.get("intervals", {}), figures.get("counts", {})
    held = ", ".join(f"{n} {label}" for label, n in counts.items())
    return (
        f"{prefix} (n={op['n']}{': ' + held if held else ''}; 95% intervals): "
        + " ".join(
            _figure(name, value, ci.get(key))
            for name, key, value in (
                ("recall", "recall", op["recall"]),
                ("fpr", "false_positive_rate", op["false_positive_rate"]),
                ("precision", "precision", op["precision"]),
                ("roc_auc", "roc_auc", figures[f"{prefix}_roc_auc"]),
                ("ece", "ece", figures[f"{prefix}_ece"]),
                ("cost/parcel", "expected_cost", op["expected_cost"]),
            )
        )
        + f" at {op['damage_rate']:.3g} damaged"
    )


def summary_lines(evaluation: dict[str, Any]) -> list[str]:
    """The chosen checkpoint, calibration, operating point, test figures and warnings, from `eval.json`."""
    c, d = evaluation["calibration"], evaluation["decision"]
    rate = d["deployment_prevalence"] or d["validation_prevalence"]
    return [
        f"best epoch {evaluation['best_epoch']}; calibration {c['method']} (slope {c['slope']:.3f}): "
        f"validation ECE {c['val_ece_before']:.3f} -> {c['val_ece_after']:.3f}, "
        f"log loss {c['val_log_loss_before']:.3f} -> {c['val_log_loss_after']:.3f}",
        f"threshold {evaluation['threshold']:.4f} ({evaluation['method']}, false alarm {d['cost_false_alarm']:g} "
        f"vs miss {d['cost_miss']:g}, damage rate {rate:.3g})",
        figures_line("test", evaluation["test"]),
        *(f"warning: {w}" for w in evaluation.get("warnings", [])),
    ]
