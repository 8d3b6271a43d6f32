"""scripts/update_readme_demo.py: the README's demo block is rewritten from a run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils.training import ROOT, smoke_config
from training.data import Item, Split, SplitManifest

SCRIPT = ROOT / "scripts" / "update_readme_demo.py"

pytestmark = pytest.mark.slow  # a subprocess


def _fabricated_run(run: Path, *, best_epoch: int = 3, epochs: int = 5) -> SplitManifest:
    """A finished run's files with made-up numbers: config, split, metrics, evaluation."""
    run.mkdir()
    (run / "config.json").write_bytes(smoke_config(f"optim.epochs={epochs}").to_json_bytes())
    files: list[tuple[str, Split]] = [
        ("intact", "train"), ("damaged", "train"), ("intact", "val"), ("damaged", "val"), ("damaged", "test")
    ]  # fmt: skip
    items = [Item(f"{label}/{i}.jpg", f"{i:064x}", label, split) for i, (label, split) in enumerate(files)]
    split = SplitManifest(items, seed=0, val_fraction=0.2, test_fraction=0.2, labels=("intact", "damaged"))
    split.write(run / "split.json")
    rows = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 0.5 + e / 100, "val_accuracy": 0.5 + e / 100,
         "val_roc_auc": 0.6 + e / 100, "train_images_per_s": 100 + e}
        for e in range(1, epochs + 1)
    ]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluation = {
        "best_epoch": best_epoch,
        "threshold": 0.8371,
        "method": "min_expected_cost",
        "decision": {"cost_false_alarm": 1.0, "cost_miss": 5.0, "deployment_prevalence": None,
                     "validation_prevalence": 0.48, "positive_label": "damaged"},
        "calibration": {"method": "temperature", "slope": 0.5, "intercept": 0.0, "val_ece_before": 0.2,
                        "val_ece_after": 0.05, "val_log_loss_before": 0.9, "val_log_loss_after": 0.6},
        "test": {"test_roc_auc": 0.91, "test_ece": 0.04, "counts": {"intact": 32, "damaged": 31},
                 "at_threshold": {"recall": 0.903, "precision": 0.7, "false_positive_rate": 0.314, "accuracy": 0.79,
                                  "expected_cost": 0.395, "damage_rate": 0.48, "n": 63},
                 "intervals": {"recall": [0.75, 0.967], "false_positive_rate": [0.18, 0.49], "precision": [0.55, 0.82],
                               "roc_auc": [0.83, 0.97], "ece": [0.03, 0.11], "expected_cost": [0.25, 0.61]}},
        "warnings": ["the test split holds 32 intact and 31 damaged images: a rate on 31 images is ..."],
    }  # fmt: skip
    (run / "eval.json").write_text(json.dumps(evaluation))
    return split


README = """# Project

Some prose that refers to the block below.

<!-- demo-run:begin (old) -->
```
epoch 12/16 ... stale numbers: split e3e0b23bb751, threshold 0.3778, recall 0.958
```
<!-- demo-run:end -->

## The next section stays as it is
"""


def _run(*args: Path | str) -> subprocess.CompletedProcess[str]:
    # This checkout's packages, whichever one the environment has installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_the_block_is_rewritten_from_the_run_and_nothing_else_changes(tmp_path: Path) -> None:
    split = _fabricated_run(tmp_path / "run")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    r = _run(tmp_path / "run", "--readme", readme)
    assert r.returncode == 0, r.stderr
    text = readme.read_text()
    assert "e3e0b23bb751" not in text and "0.3778" not in text  # the stale figures are gone
    assert f"split sha256 {split.sha256[:12]}" in text
    block = text[text.index("```\n") + 4 : text.index("\n```\n", text.index("```\n"))].splitlines()
    assert [line.split()[1] for line in block if line.startswith("epoch ")] == ["1/5", "3/5", "5/5"]
    assert block[1].endswith("*best") and block[3].endswith("*best") and not block[5].endswith("*best")
    assert block[-4].startswith("best epoch 3; calibration temperature (slope 0.500)")
    assert block[-3].startswith("threshold 0.8371")
    # Every headline figure with its interval, and the damage rate the cost is at.
    assert block[-2].startswith("test (n=63: 32 intact, 31 damaged; 95% intervals): recall 0.903 [0.750, 0.967]")
    assert "fpr 0.314 [0.180, 0.490]" in block[-2] and "cost/parcel 0.395 [0.250, 0.610] at 0.48 damaged" in block[-2]
    assert "roc_auc 0.910 [0.830, 0.970]" in block[-2] and "ece 0.040 [0.030, 0.110]" in block[-2]
    assert block[-1].startswith("warning: the test split holds 32 intact")
    assert "catches 90.3% of the 31 damaged test parcels (95% interval 75.0% to 96.7%) at a 31.4% false-alarm" in text
    assert "for 0.395 cost units per parcel (0.250 to 0.610) at 48.0% damaged" in text
    assert text.startswith("# Project\n\nSome prose that refers to the block below.\n\n<!-- demo-run:begin")
    assert text.endswith("<!-- demo-run:end -->\n\n## The next section stays as it is\n")

    assert _run(tmp_path / "run", "--readme", readme, "--check").returncode == 0
    again = _run(tmp_path / "run", "--readme", readme)
    assert "already up to date" in again.stdout and readme.read_text() == text


@pytest.mark.parametrize(
    "readme",
    [
        "# Project\n\nno markers at all\n",
        "# Project\n<!-- demo-run:begin -->\n```\nold\n```\n",  # no end marker
        "# Project\n<!-- demo-run:end -->\n<!-- demo-run:begin -->\n",  # wrong order
    ],
)
def test_missing_markers_fail_loudly_and_change_nothing(tmp_path: Path, readme: str) -> None:
    _fabricated_run(tmp_path / "run")
    (tmp_path / "README.md").write_text(readme)
    r = _run(tmp_path / "run", "--readme", tmp_path / "README.md")
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and "<!-- demo-run:begin" in r.stderr and len(r.stderr.splitlines()) == 1
    assert (tmp_path / "README.md").read_text() == readme


def test_an_unfinished_run_is_refused(tmp_path: Path) -> None:
    _fabricated_run(tmp_path / "run")
    (tmp_path / "run" / "eval.json").unlink()
    (tmp_path / "README.md").write_text(README)
    r = _run(tmp_path / "run", "--readme", tmp_path / "README.md")
    assert r.returncode == 1 and "eval.json does not exist" in r.stderr
    assert (tmp_path / "README.md").read_text() == README


def test_the_repository_readme_has_the_markers() -> None:
    text = (ROOT / "README.md").read_text()
    assert text.count("<!-- demo-run:begin") == 1 and text.count("<!-- demo-run:end -->") == 1
