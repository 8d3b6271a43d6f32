"""Predictor: eval mode, round-trip bitwise equality, parity, decisions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from model_store.bundle import load_bundle
from model_store.errors import BundleError
from model_store.predictor import Predictor
from model_store.preprocessing import Preprocessor
from model_store.signing import sign_directory
from model_store.writer import write_bundle
from model_store.zoo import build_model
from tests.utils.factories import draft_manifest, image_bytes, model_state, references


@pytest.mark.parametrize("architecture", ["mobilenet_v3_small", "resnet18", "efficientnet_b0"])
def test_round_trip_predictions_are_bitwise_identical(tmp_path: Path, keys, architecture: str) -> None:
    """What the model said before it was written is exactly what the loaded bundle says."""
    manifest = draft_manifest("rt", architecture)
    state = model_state(architecture)
    model = build_model(manifest.model)
    model.load_state_dict(state)
    model.eval()
    pre = Preprocessor(manifest.preprocessing)
    images = [image_bytes(500 + i, (90 + i, 70)) for i in range(5)]
    with torch.inference_mode():
        before = torch.sigmoid(model(torch.stack([pre(b) for b in images]))[:, 0]).tolist()

    write_bundle(tmp_path / "b", manifest, state, references(), keys[0])
    after = [p.probability for p in Predictor(load_bundle(tmp_path / "b", keys[1])).predict(images)]
    assert after == before
    assert len(set(after)) == len(after)  # the model really distinguishes the images


def test_predictor_runs_in_eval_mode_and_is_repeatable(bundles, keys) -> None:
    predictor = Predictor(load_bundle(bundles["v1"], keys[1]))
    assert not predictor.model.training
    assert not any(m.training for m in predictor.model.modules())
    images = [image_bytes(i) for i in range(4)]
    assert predictor.predict(images) == predictor.predict(images)


def test_decision_uses_the_bundle_threshold_and_labels(tmp_path: Path, keys) -> None:
    images = [image_bytes(i) for i in range(12)]
    manifest = draft_manifest("labels")
    state = model_state()
    first = write_bundle(tmp_path / "a", manifest, state, references(), keys[0])
    probs = sorted(p.probability for p in Predictor(first).predict(images))
    threshold = probs[6]  # exactly one image's probability: >= must count it as positive
    decision = manifest.decision.model_copy(
        update={"threshold": threshold, "positive_label": "broken", "negative_label": "ok"}
    )
    bundle = write_bundle(
        tmp_path / "b", manifest.model_copy(update={"decision": decision}), state, references(), keys[0]
    )
    preds = Predictor(load_bundle(bundle.path, keys[1])).predict(images)
    assert [p.decision for p in preds] == ["broken" if p.probability >= threshold else "ok" for p in preds]
    assert sum(p.decision == "broken" for p in preds) == 6


def test_written_bundle_records_expected_outputs_that_pass_parity(bundles, keys) -> None:
    bundle = load_bundle(bundles["v1"], keys[1])
    report = Predictor(bundle).check_parity()
    assert report.passed
    assert report.max_abs_diff == 0.0
    recorded = [r.expected_probability for r in bundle.manifest.parity.references]
    assert len(set(recorded)) > 1 and all(0 < p < 1 for p in recorded)


def test_parity_fails_when_recorded_outputs_were_altered_and_resigned(bundle_copy, keys) -> None:
    path = bundle_copy()
    manifest = json.loads((path / "manifest.json").read_text())
    ref = manifest["parity"]["references"][0]
    ref["expected_probability"] = round(1.0 - ref["expected_probability"], 6)
    (path / "manifest.json").write_text(json.dumps(manifest))
    sign_directory(path, keys[0])  # right key: the signature is fine, the numbers are not
    report = Predictor(load_bundle(path, keys[1])).check_parity()
    assert not report.passed
    assert report.max_abs_diff > report.tolerance
    assert "max abs diff" in report.summary()


def test_write_bundle_refuses_to_overwrite(bundles, keys) -> None:
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(bundles["v1"], draft_manifest(), model_state(), references(), keys[0])


def test_bundle_manifest_records_environment_and_digests(bundles, keys) -> None:
    bundle = load_bundle(bundles["v1"], keys[1])
    env = bundle.manifest.environment
    assert env.torch == torch.__version__ and env.device == "cpu"
    assert bundle.manifest_sha256 == hashlib.sha256((bundles["v1"] / "manifest.json").read_bytes()).hexdigest()
