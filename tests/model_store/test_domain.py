"""The retake check: validated ranges fitted from photos, and the frames a station must
not get a verdict on (black, blank, blurred, cut, tiny) answered `retake` with the reason."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from PIL import Image, ImageFilter

from model_store import domain
from model_store import monitoring as mon
from model_store.manifest import DecisionSpec
from model_store.preprocessing import Preprocessor
from tests.utils.factories import draft_manifest, parcel_photo, preprocessing_spec

PRE = Preprocessor(preprocessing_spec())


def _measures(data: bytes) -> dict[str, float]:
    info = PRE.inspect(data)
    _, stats = PRE.prepare(data, mon.STATS_STRIDE)
    return domain.measures(stats, info.width, info.height)


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _photo(seed: int) -> Image.Image:
    return Image.open(io.BytesIO(parcel_photo(seed)))


@pytest.fixture(scope="module")
def bounds():
    return domain.fit([_measures(parcel_photo(seed)) for seed in range(120)])


OFF_DOMAIN: dict[str, tuple[Callable[[], bytes], str]] = {
    "black": (lambda: _jpeg(Image.new("RGB", (160, 120))), "brightness"),
    "white": (lambda: _jpeg(Image.new("RGB", (160, 120), (255, 255, 255))), "brightness"),
    "blank grey": (lambda: _jpeg(Image.new("RGB", (160, 120), (128, 128, 128))), "contrast"),
    "blurred": (lambda: _jpeg(_photo(7).filter(ImageFilter.GaussianBlur(4))), "sharpness"),
    "a 4000x40 black strip": (lambda: _jpeg(Image.new("RGB", (4000, 40))), "brightness"),
    "a cut strip of a parcel": (lambda: _jpeg(_photo(8).resize((800, 40))), "elongation"),
    "a thumbnail": (lambda: _jpeg(_photo(9).resize((40, 30))), "short_side"),
}


@pytest.mark.parametrize("name", list(OFF_DOMAIN))
def test_frames_outside_the_validated_ranges_get_retake_with_the_reason(bounds, name: str) -> None:
    make, feature = OFF_DOMAIN[name]
    why = domain.reason(bounds, _measures(make()))
    assert why is not None, f"{name} was judged"
    assert why.feature == feature and feature in why.reason


def test_photos_like_the_validated_ones_are_judged(bounds) -> None:
    held_out = [_measures(parcel_photo(1000 + i)) for i in range(200)]
    sent_back = [w.reason for w in (domain.reason(bounds, m) for m in held_out) if w is not None]
    assert len(sent_back) <= 2, sent_back  # 1 % at most of new photos from the same cameras
    # Rotated by EXIF or by the camera: the same photo, the same verdict.
    upright = _measures(parcel_photo(5))
    turned = _measures(_jpeg(_photo(5).transpose(Image.Transpose.ROTATE_90)))
    assert turned["elongation"] == pytest.approx(upright["elongation"]) and domain.reason(bounds, turned) is None


def test_the_verdict_is_the_decision_rule_inside_and_retake_outside(bounds) -> None:
    spec: DecisionSpec = draft_manifest("v1").decision
    data = parcel_photo(3)
    info = PRE.inspect(data)
    _, stats = PRE.prepare(data, mon.STATS_STRIDE)
    for p in (0.01, 0.99):
        assert domain.verdict(spec, bounds, p, stats, info.width, info.height) == (spec.decide(p), None)
    # A bundle exported before the check existed never answers retake, whatever the image.
    black = _jpeg(Image.new("RGB", (160, 120)))
    _, dark = PRE.prepare(black, mon.STATS_STRIDE)
    assert domain.verdict(spec, None, 0.99, dark, 160, 120) == (spec.decide(0.99), None)
    decision, why = domain.verdict(spec, bounds, 0.99, dark, 160, 120)
    assert decision == domain.RETAKE and why is not None and "too dark" in why.reason
