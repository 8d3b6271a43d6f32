"""Decisions you can trust: calibration, the deployment damage rate, and re-deciding a
signed bundle without retraining (the same choice training makes)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_store.bundle import load_bundle
from model_store.manifest import CalibrationSpec, DecisionPolicy, DecisionSpec
from model_store.predictor import Predictor, served_probabilities
from training import calibration
from training import metrics as M
from training.config import config_from_run
from training.data import SplitManifest
from training.export import export_run
from training.finalize import finalize
from training.operating_point import choose_operating_point
from training.redecide import RedecideError, redecide


def _overconfident(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits 4x too large for their labels: ranks well, probabilities near 0 and 1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    true_logit = rng.normal(0, 1.5, n) + (2 * y - 1) * 1.0
    labels = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(int)
    return 4.0 * true_logit, labels


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_calibration_lowers_ece_and_log_loss_and_keeps_the_ranking(method: calibration.Method) -> None:
    z, y = _overconfident()
    spec = calibration.fit(z, y, method)
    raw = 1 / (1 + np.exp(-z))
    cal = 1 / (1 + np.exp(-(spec.slope * z + spec.intercept)))
    assert spec.method == method and 0.2 < spec.slope < 0.3  # about 1/4: it undoes the overconfidence
    assert calibration.expected_calibration_error(cal, y) < calibration.expected_calibration_error(raw, y) / 3
    assert calibration.log_loss(cal, y) < calibration.log_loss(raw, y)
    assert M.roc_auc(cal, y) == M.roc_auc(raw, y)  # monotone: the same ranking, by construction


def test_platt_fits_large_shifted_logits_that_plain_newton_steps_diverge_on() -> None:
    """Logits like the demo network's: in the tens and shifted, so intact parcels score
    above 0 (temperature alone cannot move the 0.5 point; Platt's intercept can)."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 600)
    z = np.where(y == 1, rng.normal(40.0, 12.0, 600), rng.normal(1.5, 10.0, 600))
    temp, platt = calibration.fit(z, y, "temperature"), calibration.fit(z, y, "platt")

    def probs(spec: CalibrationSpec) -> np.ndarray:
        return 1 / (1 + np.exp(-(spec.slope * z + spec.intercept)))

    # The fit is a minimum: no nearby (slope, intercept) has a lower log loss.
    best = calibration.log_loss(probs(platt), y)
    for da, db in [(0.01, 0), (-0.01, 0), (0, 0.5), (0, -0.5)]:
        near = CalibrationSpec(method="platt", slope=platt.slope * (1 + da), intercept=platt.intercept + db)
        assert calibration.log_loss(probs(near), y) >= best
    assert best < calibration.log_loss(probs(temp), y) < calibration.log_loss(1 / (1 + np.exp(-z)), y)
    assert platt.intercept < 0  # it moved the intact parcels' scores back below 0.5
    assert calibration.expected_calibration_error(probs(platt), y) < 0.05


def test_the_served_probability_is_the_calibrated_one_shifted_to_the_deployment_rate() -> None:
    spec = DecisionSpec(
        threshold=0.5,
        method="fixed",
        cost_false_alarm=1,
        cost_miss=5,
        calibration=CalibrationSpec(method="platt", slope=0.5, intercept=0.2),
        validation_prevalence=0.5,
        deployment_prevalence=0.03,
    )
    z = torch.tensor([-3.0, 0.0, 2.0, 6.0])
    got = served_probabilities(z, spec)
    shift = math.log(0.03 / 0.97) - math.log(0.5 / 0.5)
    expected = torch.sigmoid(z * 0.5 + (0.2 + shift))
    assert torch.equal(got, expected)
    identity = DecisionSpec(threshold=0.5, method="fixed", cost_false_alarm=1, cost_miss=5)
    assert torch.equal(served_probabilities(z, identity), torch.sigmoid(z))  # schema 1 bundles: unchanged


def test_expected_cost_carries_over_to_another_damage_rate() -> None:
    probs = np.array([0.1, 0.2, 0.6, 0.7, 0.9, 0.3])
    y = np.array([0, 0, 1, 1, 1, 0])
    op = M.at_threshold(probs, y, 0.25, 1.0, 5.0, prevalence=0.03)
    fpr, fnr = 1 / 3, 0.0
    assert op.expected_cost == pytest.approx(0.97 * fpr * 1.0 + 0.03 * fnr * 5.0)
    assert M.at_threshold(probs, y, 0.25, 1.0, 5.0).expected_cost == pytest.approx((1 * 1.0 + 0 * 5.0) / 6)


def test_a_rare_damage_rate_moves_the_threshold_up_and_the_cost_down() -> None:
    z, y = _overconfident(seed=1)
    cal = calibration.fit(z, y, "temperature")
    balanced, _ = choose_operating_point(z, y, DecisionPolicy(), cal)
    rare, _ = choose_operating_point(z, y, DecisionPolicy(deployment_prevalence=0.03), cal)
    assert balanced.validation_prevalence == rare.validation_prevalence == pytest.approx(y.mean())
    # Probabilities are for 3 % damage now; fewer parcels are worth pulling at cost 1 vs 5.
    assert rare.expected_cost is not None and balanced.expected_cost is not None
    assert rare.expected_cost < balanced.expected_cost

    def flagged(spec: DecisionSpec) -> float:
        probs = served_probabilities(torch.tensor(z, dtype=torch.float32), spec).numpy()
        return float((probs >= spec.threshold).mean())

    assert flagged(rare) < flagged(balanced)


def test_training_reports_calibration_before_and_after_and_keeps_roc_auc(finished_run) -> None:
    run_dir, evaluation = finished_run
    cal = evaluation["calibration"]
    assert cal["method"] == "temperature"
    for split in ("val", "test"):
        assert {
            f"{split}_ece_before",
            f"{split}_ece_after",
            f"{split}_log_loss_before",
            f"{split}_log_loss_after",
        } <= cal.keys()
    # One definition: ROC-AUC of the probabilities the service serves, as `evaluate` measures it.
    test = evaluation["predictions"]["test"]
    served_auc = M.roc_auc([r["probability"] for r in test], [int(r["label"] == "damaged") for r in test])
    assert evaluation["test"]["test_roc_auc"] == served_auc
    assert cal["test_ece_after"] == evaluation["test"]["test_ece"]
    assert cal["val_log_loss_after"] <= cal["val_log_loss_before"] + 1e-9  # fitted to minimise it there
    assert (run_dir / "plots" / "reliability.png").stat().st_size > 1000
    assert "Calibration (" in (run_dir / "report.html").read_text()


@pytest.fixture(scope="module")
def parent(finished_run, keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir, _ = finished_run
    bundle, _ = export_run(run_dir, keys[0], "p-1", tmp_path_factory.mktemp("redecide") / "p-1")
    return bundle.path


def test_a_redecided_bundle_has_the_threshold_training_would_choose(
    parent: Path, finished_run, data_dir: Path, keys, tmp_path: Path
) -> None:
    original, child = redecide(
        parent, keys[1], keys[0], "p-2", tmp_path / "p-2", cost_miss=10.0, deployment_prevalence=0.03
    )
    # Training itself, on the same run, with those settings:
    run_dir, _ = finished_run
    rerun = tmp_path / "rerun"
    shutil.copytree(run_dir, rerun)
    config = json.loads((rerun / "config.json").read_text())
    config["decision"].update(cost_miss=10.0, deployment_prevalence=0.03)
    (rerun / "config.json").write_text(json.dumps(config))
    split = SplitManifest.from_json_bytes((rerun / "split.json").read_bytes())
    trained = finalize(config_from_run(rerun), split, data_dir, rerun, torch.device("cpu"), lambda _: None)

    d = child.manifest.decision
    assert d.threshold == trained["threshold"]
    assert d.expected_cost == pytest.approx(trained["decision"]["expected_cost"])
    assert (d.cost_miss, d.deployment_prevalence) == (10.0, 0.03)
    assert d.calibration == original.manifest.decision.calibration
    assert child.manifest.weights_sha256 == original.manifest.weights_sha256
    assert (child.path / "model.safetensors").read_bytes() == (parent / "model.safetensors").read_bytes()
    assert child.manifest.lineage.parent_manifest_sha256 == original.manifest_sha256
    assert Predictor(load_bundle(child.path, keys[1])).check_parity().passed  # expectations recomputed


def test_redecide_from_the_command_line(parent: Path, keys, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    r = subprocess.run(
        [sys.executable, "-m", "training", "redecide", "--bundle", str(parent), "--key", str(keys[0]),
         "--version", "p-3", "--out", str(out), "--cost-miss", "10", "--prevalence", "0.03"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "same weights" in r.stdout and load_bundle(out, keys[1]).version == "p-3"
    bad = subprocess.run(
        [sys.executable, "-m", "training", "redecide", "--bundle", str(parent), "--key", str(keys[0]),
         "--version", "p-4", "--out", str(tmp_path / "bad"), "--prevalence", "1.5"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "deployment_prevalence" in bad.stderr


def test_a_bundle_without_validation_scores_cannot_be_redecided(bundles, keys, tmp_path: Path) -> None:
    with pytest.raises(RedecideError, match="no validation scores"):
        redecide(bundles["v1"], keys[1], keys[0], "v9", tmp_path / "v9", cost_miss=10.0)


def test_compare_two_bundles_offline(bundles, keys, data_dir: Path, tmp_path: Path) -> None:
    from training.compare import compare

    images = tmp_path / "images"
    for label in ("intact", "damaged"):
        (images / label).mkdir(parents=True)
        for p in sorted((data_dir / label).iterdir())[:12]:
            shutil.copy(p, images / label / p.name)
    summary = compare(bundles["v1"], bundles["v2"], keys[1], images, tmp_path / "out")

    a, b = (Predictor(load_bundle(bundles[v], keys[1])) for v in ("v1", "v2"))
    paths = sorted(p for p in images.rglob("*.jpg"))
    flipped = [p for p in paths if a.predict([p.read_bytes()])[0].decision != b.predict([p.read_bytes()])[0].decision]
    assert flipped, "the fixture versions must disagree on some of these images"
    assert summary["images"] == 24
    assert {f["path"] for f in summary["flipped"]} == {p.relative_to(images).as_posix() for p in flipped}
    assert summary["agreement"] == pytest.approx(1 - len(flipped) / 24)
    assert set(summary["a"]["metrics"]) >= {"recall", "precision", "roc_auc"}  # labelled: both bundles' metrics
    assert set(summary["b"]["metrics"]["intervals"]) >= {"recall", "false_positive_rate", "expected_cost"}
    page = (tmp_path / "out" / "compare.html").read_text()
    assert page.count("<figure>") == len(flipped) and (tmp_path / "out" / "scatter.png").stat().st_size > 1000
    assert len(list((tmp_path / "out" / "thumbs").iterdir())) == len(flipped)
    # The flips that moved most, explained by both bundles: two heatmap overlays each, at most 8 flips.
    shown = min(len(flipped), 8)
    assert summary["heatmaps"] == shown and page.count("<figure class='pair'>") == shown
    heatmaps = sorted((tmp_path / "out" / "heatmaps").iterdir())
    assert len(heatmaps) == 2 * shown
    for png in heatmaps:
        with Image.open(png) as img:
            assert img.format == "PNG" and max(img.size) <= 240
