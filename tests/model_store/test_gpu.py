"""CPU vs GPU parity. Skipped (and reported as skipped) on machines without CUDA, like CI."""

from __future__ import annotations

import pytest
import torch

from model_store.bundle import load_bundle
from model_store.predictor import Predictor
from tests.utils.factories import image_bytes

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_bundle_recorded_on_cpu_passes_parity_on_gpu(bundles, keys) -> None:
    bundle = load_bundle(bundles["v1"], keys[1])
    report = Predictor(bundle, device="cuda").check_parity()
    assert report.passed, report.summary()


def test_gpu_predictions_match_cpu_within_tolerance(bundles, keys) -> None:
    bundle = load_bundle(bundles["v1"], keys[1])
    images = [image_bytes(900 + i) for i in range(16)]
    cpu = Predictor(bundle).predict(images)
    gpu = Predictor(bundle, device="cuda").predict(images)
    tolerance = bundle.manifest.parity.tolerance
    assert max(abs(a.probability - b.probability) for a, b in zip(cpu, gpu, strict=True)) <= tolerance
