"""Issue 22: a small data set ends in a refusal or warnings with intervals, never a
perfect score; degenerate calibration and thresholds are caught; one definition per figure;
pretrained weights from a torchvision checkpoint; the README's commands work as pasted."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file

from model_store.manifest import CalibrationSpec, DecisionPolicy
from model_store.zoo import build_model
from tests.utils.training import ROOT, same_figures
from training import calibration
from training import metrics as M
from training.config import load_config
from training.operating_point import choose_operating_point
from training.synth import generate, render

DEFAULT = ROOT / "configs" / "default.toml"


def _overconfident(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0, 1.5, n) + (2 * rng.integers(0, 2, n) - 1) * 1.0
    labels = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(int)
    return 4.0 * true_logit, labels


def _separated_handful() -> tuple[np.ndarray, np.ndarray]:
    """Nine validation images a network ranks perfectly: what 60 photos leave for validation."""
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    z = np.array([-6.1, -4.0, -3.2, -1.5, 2.2, 4.8, 5.0, 7.5, 9.0])
    return z, y


# --- calibration and the threshold: degenerate fits ---------------------------------------


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_a_perfectly_separated_handful_is_not_calibrated_and_the_reason_is_one_line(method) -> None:
    z, y = _separated_handful()
    # What it used to serve: a slope that only stopped growing with the iterations, and
    # probabilities within 1e-6 of 0 and 1 (ECE 0.000, "perfect").
    plain = calibration.fit(z, y, method)
    served = 1 / (1 + np.exp(-(plain.slope * z + plain.intercept)))
    assert np.all(np.minimum(served, 1 - served) < 1e-6)
    spec = calibration.fit_checked(z, y, method)
    assert (spec.method, spec.slope, spec.intercept) == ("none", 1.0, 0.0)
    assert spec.note is not None and "\n" not in spec.note
    assert f"calibration {method} not used" in spec.note and "perfectly separated" in spec.note


def test_a_slope_outside_the_sane_range_falls_back_and_a_sane_one_is_kept() -> None:
    z, y = _overconfident()
    assert calibration.fit_checked(z, y, "platt") == calibration.fit(z, y, "platt")  # the demo-like case: kept
    tiny = z * 1e-3  # the same ranking on a scale that needs a slope of about 250
    spec = calibration.fit_checked(tiny, y, "platt")
    assert spec.method == "none" and spec.note is not None and "is above 50" in spec.note
    # Scores independent of the labels: the best slope is 0, and flat probabilities are honest.
    flat = calibration.fit_checked(np.tile([-1.0, 1.0, -1.0, 1.0], 50), np.tile([0, 0, 1, 1], 50), "platt")
    assert flat.method == "platt" and flat.note is not None and "almost no information" in flat.note


def test_a_threshold_at_the_edge_and_a_perfect_handful_are_flagged_in_the_decision() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    backwards = -y + rng.normal(0, 0.3, 200)  # damaged parcels score lower: flagging all is cheapest
    spec, _ = choose_operating_point(backwards, y, DecisionPolicy(), CalibrationSpec())
    assert spec.threshold == 0.0
    assert any(w.startswith("threshold 0.000000 is at the edge of [0, 1]") for w in spec.warnings)

    z, y = _separated_handful()
    spec, figures = choose_operating_point(
        z, y, DecisionPolicy(deployment_prevalence=0.03), calibration.fit_checked(z, y, "platt")
    )
    text = "\n".join(spec.warnings)
    assert "calibration platt not used" in text  # the calibration's reason travels with the decision
    assert "validation is perfectly separated on 9 images" in text
    assert "the val split holds 4 intact and 5 damaged images" in text
    assert figures["warnings"] == spec.warnings


# --- intervals ------------------------------------------------------------------------------


def test_a_perfect_score_on_a_handful_has_wide_intervals_and_many_images_narrow_ones() -> None:
    z, y = _separated_handful()
    p = 1 / (1 + np.exp(-z))
    few = M.figure_intervals(p, y, 0.5, 1.0, 5.0, 0.03, p)
    assert M.at_threshold(p, y, 0.5, 1.0, 5.0).recall == 1.0
    assert few["recall"][1] == 1.0 and few["recall"][0] < 0.6  # 5 of 5 caught: not "recall 1.000"
    assert few["false_positive_rate"][1] > 0.4 and few["roc_auc"][0] < 0.6 and few["expected_cost"][1] > 0.1
    assert set(few) == {"recall", "false_positive_rate", "precision", "expected_cost", "roc_auc", "ece"}

    z, y = _overconfident(4000)
    p = 1 / (1 + np.exp(-z))
    many = M.figure_intervals(p, y, 0.5, 1.0, 5.0, 0.03, p)
    op = M.at_threshold(p, y, 0.5, 1.0, 5.0, 0.03)
    for key, value in (("recall", op.recall), ("false_positive_rate", op.false_positive_rate)):
        lo, hi = many[key]
        assert lo <= value <= hi and hi - lo < 0.06, key
    assert M.figure_intervals(p, y, 0.5, 1.0, 5.0, 0.03, p) == many  # seeded: the same every time


def test_every_cost_is_at_the_deployment_rate_and_the_manifest_carries_intervals() -> None:
    z, y = _overconfident(seed=2)
    spec, figures = choose_operating_point(
        z, y, DecisionPolicy(deployment_prevalence=0.03), calibration.fit(z, y, "platt")
    )
    v = spec.validation
    assert v is not None and v.damage_rate == 0.03 == figures["at_threshold"]["damage_rate"]
    assert v.expected_cost == spec.expected_cost  # one rate: it used to be the split's own ~50%
    assert v.intervals is not None and set(v.intervals) == set(figures["intervals"])
    assert v.positives == int(y.sum()) and v.roc_auc == figures["val_roc_auc"] and v.ece == figures["val_ece"]


# --- the 60-photo run, through the command line ----------------------------------------------


def _own_photos(root: Path, per_class: int = 30) -> None:
    """A user's photos: two folders, mixed sizes, some with EXIF rotation, a few PNGs."""
    sizes = [(640, 480), (1024, 768), (480, 640), (800, 600), (1280, 720)]
    for label, damaged in (("intact", False), ("damaged", True)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            img = render(7_000 + 97 * i + damaged, damaged, sizes[i % len(sizes)])
            buf = io.BytesIO()
            if i % 10 == 3:
                img.save(buf, format="PNG")
                (root / label / f"IMG_{i:04d}.png").write_bytes(buf.getvalue())
                continue
            exif = Image.Exif()
            if i % 4 == 1:
                exif[0x0112] = 6  # camera held upright: rotate 90 degrees on display
            img.save(buf, format="JPEG", quality=88, exif=exif)
            (root / label / f"IMG_{i:04d}.JPG").write_bytes(buf.getvalue())


def _cli(*args: str | Path, module: str = "training", timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.mark.slow
def test_sixty_photos_are_refused_then_trained_with_warnings_and_intervals_not_a_perfect_score(
    tmp_path: Path, keys
) -> None:
    data, run_dir, config = tmp_path / "photos", tmp_path / "run", tmp_path / "my.toml"
    _own_photos(data)
    config.write_text(DEFAULT.read_text())  # configs/default.toml copied, as a new user does
    fast = ["--set", "optim.epochs=2", "--set", "loader.workers=0"]

    refused = _cli("train", "--config", config, "--data", data, "--run-dir", run_dir, *fast)
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("error: too few images for the figures training prints: val has 4 intact, 4 damaged")
    assert "At least 20 of each class" in line and "about 130 photos per class" in line
    assert "--allow-small-data" in line and not run_dir.exists()

    trained = _cli("train", "--config", config, "--data", data, "--run-dir", run_dir, *fast, "--allow-small-data")
    assert trained.returncode == 0, trained.stderr
    err = trained.stderr
    print(err)
    assert "images per class: train intact 22 damaged 22 | val intact 4 damaged 4 | test intact 4 damaged 4" in err
    assert (
        "warning: the test split holds 4 intact and 4 damaged images: a rate on 4 images is known only to ±0.49" in err
    )
    [test_line] = [x for x in err.splitlines() if x.startswith("test (n=8: 4 intact, 4 damaged; 95% intervals)")]
    for name in ("recall", "fpr", "precision", "roc_auc", "ece", "cost/parcel"):
        assert re.search(rf"{re.escape(name)} \d\.\d{{3}} \[\d\.\d{{3}}, \d\.\d{{3}}\]", test_line), name
    assert test_line.endswith("at 0.03 damaged")

    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["data"]["counts"]["test"] == {"intact": 4, "damaged": 4}
    recall_lo, recall_hi = ev["test"]["intervals"]["recall"]
    assert recall_hi - recall_lo > 0.4  # 4 damaged images cannot pin recall down, whatever it is
    # No degenerate fit goes through unremarked: a sane slope, or the identity with its reason.
    cal = ev["decision"]["calibration"]
    lo, hi = calibration.SANE_SLOPE
    assert lo <= cal["slope"] <= hi and (cal["method"] == "platt" or "not used" in cal["note"])
    t = ev["threshold"]
    assert 1e-4 < t < 1 - 1e-4 or any("at the edge" in w for w in ev["warnings"])
    assert "Read these figures with care" in (run_dir / "report.html").read_text()

    bundle = tmp_path / "bundle"
    exported = _cli("export", "--run", run_dir, "--key", keys[0], "--version", "mine-1", "--out", bundle)
    assert exported.returncode == 0, exported.stderr
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["lineage"]["split_counts"] == ev["data"]["counts"]
    assert m["decision"]["warnings"] and m["decision"]["validation"]["n"] == 8
    assert set(m["decision"]["validation"]["intervals"]) == set(ev["test"]["intervals"])

    evaluated = _cli("evaluate", "--bundle", bundle, "--data", data, "--public-key", keys[1])
    assert evaluated.returncode == 0, evaluated.stderr
    assert "-0.0" not in evaluated.stdout and "accuracy" not in evaluated.stdout.replace('"accuracy": ', "", 1)
    same_figures(json.loads(evaluated.stdout), ev["test"])


# --- pretrained weights -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_torchvision_checkpoint_converts_without_unpickling_and_fine_tunes(tmp_path: Path) -> None:
    stand_in = torchvision.models.mobilenet_v3_small(weights=None)  # ImageNet's shape: 1000 classes
    with torch.no_grad():
        stand_in.features[0][0].weight.fill_(0.0125)  # recognisable after conversion
    torch.save(stand_in.state_dict(), tmp_path / "mobilenet_v3_small-imagenet.pth")
    out = tmp_path / "weights" / "mnv3.safetensors"

    r = _cli(
        "weights", "convert", tmp_path / "mobilenet_v3_small-imagenet.pth", out, "--architecture", "mobilenet_v3_small"
    )
    assert r.returncode == 0, r.stderr
    assert "242 of mobilenet_v3_small's 244 tensors" in r.stdout
    assert "dropped 2 that do not fit (classifier.3.bias [1000], classifier.3.weight [1000, 1024])" in r.stdout
    tensors = load_file(out)
    assert len(tensors) == 242 and not any(k.startswith("classifier.3.") for k in tensors)
    assert torch.all(tensors["features.0.0.weight"] == 0.0125)
    build_model(load_config(ROOT / "configs" / "finetune.toml").model.spec()).load_state_dict(tensors, strict=False)

    class Payload:  # what a hostile .pth can carry: code run on unpickling
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {shlex.quote(str(tmp_path / 'ran'))}",))

    torch.save({"state_dict": stand_in.state_dict(), "extra": Payload()}, tmp_path / "hostile.pth")
    r = _cli("weights", "convert", tmp_path / "hostile.pth", tmp_path / "h.safetensors", "--architecture", "resnet18")
    assert r.returncode == 1 and "is not unpickled (weights_only)" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "ran").exists() and not (tmp_path / "h.safetensors").exists()
    r = _cli("weights", "convert", tmp_path / "mobilenet_v3_small-imagenet.pth", tmp_path / "r.safetensors",
             "--architecture", "resnet18")  # fmt: skip
    assert r.returncode == 1 and "fits only 0 of resnet18's 122 tensors" in r.stderr

    data = tmp_path / "data"
    generate(data, 40, seed=5, size=(160, 120))
    small = ["--set", "optim.epochs=1", "--set", "loader.workers=0", "--set", "preprocessing.resize=72",
             "--set", "preprocessing.crop=64", "--allow-small-data"]  # fmt: skip
    r = _cli("train", "--config", ROOT / "configs" / "finetune.toml", "--set", f'model.pretrained="{out}"',
             "--data", data, "--run-dir", tmp_path / "ft", *small)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"pretrained: loaded 242/244 tensors from {out}" in r.stderr


# --- small fixes ------------------------------------------------------------------------------


def test_the_readme_resnet18_example_builds_as_pasted() -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("--run-dir runs/r2")
    command = text[text.rindex("python -m training train", 0, start) : text.index("\n", text.index("resnet18", start))]
    args = shlex.split(command.replace("\\\n", " ").split("#")[0])
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert "model.architecture=resnet18" in sets
    config = load_config(DEFAULT, sets)
    build_model(config.model.spec())  # used to fail: resnet18 takes no dropout


@pytest.mark.slow
def test_synth_says_how_far_it_is() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        r = _cli("synth", "--out", Path(tmp) / "d", "--count", "20", "--seed", "1")
    assert r.returncode == 0
    progress = [line for line in r.stderr.splitlines() if line.startswith("synth: ")]
    assert progress[0].startswith("synth: 2/20 images") and progress[-1].startswith("synth: 20/20 images")
