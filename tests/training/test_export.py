"""Export to a signed bundle, evaluate it, and the whole smoke workflow through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model_store.bundle import load_bundle
from model_store.predictor import Predictor
from model_store.store import FilesystemStore
from tests.utils.factories import upstream_verify
from tests.utils.training import SMOKE, same_figures
from training.checkpoint import file_sha256
from training.evaluate import evaluate_bundle
from training.export import ExportError, export_run, export_to_store


@pytest.fixture(scope="module")
def exported(finished_run, keys, tmp_path_factory):
    run_dir, _ = finished_run
    out = tmp_path_factory.mktemp("export") / "bundle"
    bundle, diff = export_run(run_dir, keys[0], "2026.11.1", out)
    return bundle, diff


def test_export_writes_a_verified_bundle_that_matches_the_run(exported, finished_run, keys) -> None:
    bundle, diff = exported
    run_dir, evaluation = finished_run
    m = load_bundle(bundle.path, keys[1]).manifest
    assert diff <= m.parity.tolerance
    assert m.version == "2026.11.1" and m.model.architecture == "mobilenet_v3_small"
    assert m.decision.threshold == evaluation["threshold"]
    assert m.decision.validation is not None
    assert m.decision.validation.recall == evaluation["validation"]["at_threshold"]["recall"]
    assert m.lineage.config_sha256 == (run_dir / "config.sha256").read_text().strip()
    assert m.lineage.split_manifest_sha256 == (run_dir / "split.json.sha256").read_text().strip()
    assert m.lineage.checkpoint_sha256 == file_sha256(run_dir / "checkpoints" / "best.pt")
    assert m.lineage.epoch == evaluation["best_epoch"]
    assert m.preprocessing.crop == 64 and m.preprocessing.resize == 72
    # The device the run trained on, as the run recorded it (not a default).
    assert m.environment.device == json.loads((run_dir / "run.json").read_text())["device"] == "cpu"
    labels = [r.label for r in m.parity.references]
    assert {"intact", "damaged"} <= set(labels)
    assert len(labels) == 2 + 2 + 2  # per class, plus the hard cases


def test_export_records_the_validated_ranges_and_the_test_splits_retake_share(
    exported, finished_run, data_dir: Path, keys
) -> None:
    from model_store import domain
    from model_store.preprocessing import Preprocessor
    from training.export import retake_reasons

    bundle, _ = exported
    _, evaluation = finished_run
    m = load_bundle(bundle.path, keys[1]).manifest
    assert m.monitoring is not None and m.monitoring.domain is not None
    bounds = m.monitoring.domain
    assert set(bounds.ranges) == set(domain.FEATURES) and bounds.images == len(evaluation["predictions"]["val"])
    test = [data_dir / r["path"] for r in evaluation["predictions"]["test"]]
    sent_back = retake_reasons(m.monitoring, Preprocessor(m.preprocessing), test)
    # The signed manifest says how many test photos the bundle sends back, and it is few.
    assert (bounds.test_images, bounds.test_retakes) == (len(test), len(sent_back))
    assert len(sent_back) <= 0.05 * len(test), sent_back
    # Every parity reference is an image the bundle judges (a verdict is what parity expects).
    pre = Preprocessor(m.preprocessing)
    refs = load_bundle(bundle.path, keys[1]).references
    for r in m.parity.references:
        data = refs[r.file]
        info = pre.inspect(data)
        _, stats = pre.prepare(data, m.monitoring.stats_stride)
        assert domain.reason(bounds, domain.measures(stats, info.width, info.height)) is None, r.file


def test_exported_bundle_passes_parity_and_upstream_verification(exported, keys) -> None:
    bundle, _ = exported
    assert Predictor(load_bundle(bundle.path, keys[1])).check_parity().passed
    result = upstream_verify(bundle.path, keys[1])
    assert result.returncode == 0, result.stdout + result.stderr


def test_evaluate_equals_what_training_reported(exported, finished_run, data_dir: Path, keys) -> None:
    bundle, _ = exported
    _, evaluation = finished_run
    got = evaluate_bundle(bundle.path, keys[1], data_dir, "test")
    same_figures(got, evaluation["test"])  # every figure and its interval, as training reported them
    assert "test_accuracy" not in got and "test_loss" not in got  # one accuracy (at the threshold), one loss


def test_evaluate_refuses_another_data_set_for_the_test_split(exported, keys, tmp_path: Path) -> None:
    from training.data import DataError
    from training.synth import generate

    bundle, _ = exported
    generate(tmp_path, 30, seed=99)
    with pytest.raises(DataError, match="--split all"):
        evaluate_bundle(bundle.path, keys[1], tmp_path, "test")
    assert evaluate_bundle(bundle.path, keys[1], tmp_path, "all")["at_threshold"]["n"] == 30


def test_export_fails_when_the_bundle_disagrees_with_training(finished_run, keys, tmp_path: Path) -> None:
    import shutil

    run_dir, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    ev = json.loads((copy / "eval.json").read_text())
    ev["predictions"]["test"][3]["probability"] += 0.01  # what training "reported" is now off
    (copy / "eval.json").write_text(json.dumps(ev))
    with pytest.raises(ExportError, match="disagrees with training"):
        export_run(copy, keys[0], "bad", tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_export_into_a_store(finished_run, keys, tmp_path: Path) -> None:
    run_dir, _ = finished_run
    export_to_store(run_dir, keys[0], "v-store", tmp_path / "store", keys[1], actor="ci")
    store = FilesystemStore(tmp_path / "store", keys[1])
    assert [v.version for v in store.versions()] == ["v-store"]
    assert store.audit_log()[-1].actor == "ci"


@pytest.mark.slow
def test_smoke_workflow_through_the_cli(tmp_path: Path) -> None:
    """synth → train → export → verify, as a data scientist types it."""

    def cli(*args: str, module: str = "training") -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        r = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    data, run_dir, keys = tmp_path / "data", tmp_path / "run", tmp_path / "keys"
    cli("synth", "--out", str(data), "--count", "80", "--seed", "11")
    trained = cli(
        "train", "--config", str(SMOKE), "--data", str(data), "--run-dir", str(run_dir), "--set", "loader.workers=0"
    )
    assert "epoch 2/2" in trained.stderr and "threshold" in trained.stderr  # progress is visible
    # stderr is a pipe here, as in a log file: one plain line per epoch, no bar frames
    assert "\r" not in trained.stderr
    assert [line.split()[1] for line in trained.stderr.splitlines() if line.startswith("epoch ")] == ["1/2", "2/2"]
    cli("keygen", "--out", str(keys), module="model_store")
    exported = cli(
        "export",
        "--run",
        str(run_dir),
        "--key",
        str(keys / "private.pem"),
        "--version",
        "smoke-1",
        "--out",
        str(tmp_path / "bundle"),
    )
    assert "exported parcel-damage smoke-1" in exported.stdout
    verified = cli("verify", str(tmp_path / "bundle"), "--public-key", str(keys / "public.pem"), module="model_store")
    assert "OK: parcel-damage smoke-1 verified" in verified.stdout
    evaluated = json.loads(
        cli(
            "evaluate",
            "--bundle",
            str(tmp_path / "bundle"),
            "--data",
            str(data),
            "--public-key",
            str(keys / "public.pem"),
        ).stdout
    )
    reported = json.loads((run_dir / "eval.json").read_text())["test"]["at_threshold"]
    assert evaluated["at_threshold"] == reported


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "training", "train", "--data", str(tmp_path / "none"), "--run-dir", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"error: data directory {tmp_path / 'none'} does not exist"]


def test_export_records_the_device_the_run_trained_on(finished_run, keys, tmp_path: Path) -> None:
    """A GPU-trained run says so in its bundle (faked here by the run's own record)."""
    run_dir, _ = finished_run
    gpu_run = tmp_path / "gpu-run"
    shutil.copytree(run_dir, gpu_run)
    meta = json.loads((gpu_run / "run.json").read_text())
    meta["device"] = "cuda (NVIDIA H100 80GB HBM3)"
    (gpu_run / "run.json").write_text(json.dumps(meta))
    bundle, _ = export_run(gpu_run, keys[0], "gpu-1", tmp_path / "bundle")
    assert bundle.manifest.environment.device == "cuda (NVIDIA H100 80GB HBM3)"


def test_the_retake_benchmark_reports_the_test_split_and_catches_black_frames(
    exported, finished_run, keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.retake import main as retake_benchmark

    bundle, _ = exported
    run_dir, evaluation = finished_run
    out = tmp_path / "retake.json"
    args = ["--run", str(run_dir), "--bundle", str(bundle.path), "--public-key", str(keys[1])]
    assert retake_benchmark([*args, "--per-family", "4", "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    test = figures["test split (should be judged)"]
    assert test["frames"] == len(evaluation["predictions"]["test"])
    monitoring = load_bundle(bundle.path, keys[1]).manifest.monitoring
    assert monitoring is not None and monitoring.domain is not None
    assert test["retake"] == monitoring.domain.test_retakes
    assert figures["black (lens covered, light off)"] == {"frames": 4, "retake": 4, "by_feature": {"brightness": 4}}
    assert "black (lens covered, light off)" in capsys.readouterr().out
