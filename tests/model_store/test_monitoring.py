"""Drift measures: PSI, reference histograms, the crop features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_store import monitoring as mon
from model_store.manifest import DecisionSpec, MonitoringSpec


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shifted_one() -> None:
    rng = np.random.default_rng(0)
    ref = mon.fit_histogram(rng.normal(100, 20, 2000).tolist())
    assert mon.psi(ref, rng.normal(100, 20, 500).tolist()) < mon.PSI_WARN
    assert mon.psi(ref, rng.normal(60, 20, 500).tolist()) > mon.PSI_ALARM
    assert len(ref.cuts) == mon.BINS - 1 and sum(ref.fractions) == pytest.approx(1)


def test_a_constant_reference_still_detects_another_value() -> None:
    ref = mon.fit_histogram([1280.0] * 50)
    assert mon.psi(ref, [1280.0] * 40) == pytest.approx(0, abs=1e-9)
    assert mon.psi(ref, [640.0] * 40) > mon.PSI_ALARM
    assert mon.psi(ref, [1920.0] * 40) > mon.PSI_ALARM


def test_the_reference_decision_rate_is_the_deployment_rate_not_the_validation_one() -> None:
    scores = [0.9] * 50 + [0.1] * 50  # the model decides exactly by label on a balanced split
    labels = [1] * 50 + [0] * 50
    balanced = DecisionSpec(threshold=0.5, method="fixed", cost_false_alarm=1, cost_miss=5)
    rare = balanced.model_copy(update={"deployment_prevalence": 0.03})
    assert mon.score_reference(scores, labels, balanced)[1] == pytest.approx(0.5)
    assert mon.score_reference(scores, labels, rare)[1] == pytest.approx(0.03)


def test_crop_features_follow_light_contrast_and_blur() -> None:
    rng = torch.Generator().manual_seed(0)
    crop = torch.randint(40, 200, (3, 64, 64), dtype=torch.uint8, generator=rng)
    base = mon.image_stats(crop)
    dark = mon.image_stats((crop.float() * 0.5).to(torch.uint8))
    flat = mon.image_stats(torch.full_like(crop, 120))
    assert dark.brightness == pytest.approx(base.brightness * 0.5, rel=0.02)
    assert dark.contrast < base.contrast and flat.contrast == 0
    assert flat.sharpness < 1e-3 < base.sharpness


def test_features_use_the_pixel_step_the_bundle_recorded() -> None:
    """New references use every 2nd pixel (a quarter of the work per served image); a bundle
    exported before the step was recorded is compared at every pixel, as its reference was."""
    x = torch.arange(64, dtype=torch.float32)
    wave = 128 + 100 * torch.sin(2 * torch.pi * x / 16)  # a soft edge every 8 pixels, as a parcel's
    crop = wave.expand(3, 64, 64).round().to(torch.uint8)
    full, strided = mon.image_stats(crop, 1), mon.image_stats(crop, mon.STATS_STRIDE)
    assert strided == mon.image_stats(crop[:, ::2, ::2].contiguous())
    assert strided.sharpness > 3 * full.sharpness  # another scale: not comparable with each other
    old = MonitoringSpec.model_validate({"images": 1, "decision_rate": 0.1, "features": {}})
    assert old.stats_stride == 1
    rows = [{f: float(i) for f in mon.FEATURES} for i in range(40)]
    new = mon.reference(
        rows, [i % 2 for i in range(40)], DecisionSpec(threshold=0.5, method="fixed", cost_false_alarm=1, cost_miss=5)
    )
    assert new.stats_stride == mon.STATS_STRIDE == 2
