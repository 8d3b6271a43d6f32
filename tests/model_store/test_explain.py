"""Explanations (`model_store.explain`): the served probability bit for bit, heatmaps placed on
the image as sent (EXIF orientation, the crop), a bounded overlay, and both methods on every
architecture of the zoo."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_store.bundle import load_bundle
from model_store.explain import METHODS, OVERLAY_MAX_SIDE, Explanation, explain, overlay_png
from model_store.manifest import RuntimeSpec
from model_store.predictor import Predictor
from model_store.preprocessing import Preprocessor
from model_store.writer import write_bundle
from tests.utils.factories import draft_manifest, image_bytes, model_state, parcel_photo, preprocessing_spec, references

RUNTIMES = {
    "eager": RuntimeSpec(),
    "fused-channels-last": RuntimeSpec(graph="fused", memory_format="channels_last"),
}


def _predictor(root: Path, keys: tuple[Path, Path], architecture: str, runtime: str) -> Predictor:
    manifest = draft_manifest("x", architecture).model_copy(update={"runtime": RUNTIMES[runtime]})
    out = root / f"{architecture}-{runtime}"
    write_bundle(out, manifest, model_state(architecture), references(), keys[0])
    return Predictor(load_bundle(out, keys[1]))


@pytest.mark.parametrize(
    ("architecture", "runtime"),
    [
        ("mobilenet_v3_small", "eager"),
        ("mobilenet_v3_small", "fused-channels-last"),  # the demo's runtime
        ("resnet18", "fused-channels-last"),
        ("efficientnet_b0", "eager"),
    ],
)
def test_the_probability_is_predicts_bit_for_bit_and_every_method_maps_the_input(
    tmp_path: Path, keys, architecture: str, runtime: str
) -> None:
    predictor = _predictor(tmp_path, keys, architecture, runtime)
    images = [parcel_photo(seed) for seed in (3, 4)]
    served = [predictor.predict([img])[0] for img in images]
    crop = predictor.manifest.preprocessing.crop
    for method in METHODS:
        for img, p in zip(images, served, strict=True):
            e = explain(predictor, img, method)
            assert (e.probability, e.decision) == (p.probability, p.decision), method  # ==, not approx
            assert e.heatmap.shape == (crop, crop)
            assert e.heatmap.min() >= 0.0 and e.heatmap.max() in (0.0, 1.0), method
    # Gradients were computed on the model: nothing it serves changed.
    assert [predictor.predict([img])[0] for img in images] == served


def test_an_exif_rotated_photo_is_explained_as_the_upright_one(tmp_path: Path, keys) -> None:
    """Rows run over the image as a viewer shows it: a camera's rotated photo with its EXIF
    orientation gets the same grid as the same pixels stored upright."""
    predictor = _predictor(tmp_path, keys, "mobilenet_v3_small", "eager")
    upright = Image.open(io.BytesIO(parcel_photo(6, size=(160, 120)))).transpose(Image.Transpose.ROTATE_90)
    assert upright.size == (120, 160)  # portrait, as a viewer shows it
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # turned 90 degrees anticlockwise: landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": undoes the turn above
    plain, rotated = io.BytesIO(), io.BytesIO()
    upright.save(plain, format="PNG")
    stored.save(rotated, format="PNG", exif=exif.tobytes())
    a, b = explain(predictor, plain.getvalue()), explain(predictor, rotated.getvalue())
    assert (b.width, b.height) == (a.width, a.height) == (120, 160)
    assert b.probability == a.probability
    assert b.grid() == a.grid()
    assert len(b.grid()) == 8 and {len(row) for row in b.grid()} == {6}  # 8 rows on the longer side
    png = Image.open(io.BytesIO(overlay_png(predictor.preprocessor, rotated.getvalue(), b)))
    assert png.size == (120, 160)


def test_the_grid_puts_the_heat_where_it_lies_in_the_image_and_nothing_where_the_crop_cut() -> None:
    pre = Preprocessor(preprocessing_spec(resize=72, crop=64))
    seen = pre.crop_box(640, 480)  # 96 x 72 resized, 64 x 64 taken from its centre
    heat = np.zeros((64, 64), dtype=np.float32)
    heat[:8, 56:] = 1.0  # the crop's top-right corner
    e = Explanation(0.9, "damaged", "occlusion", heat, 640, 480, seen)
    grid = e.grid()
    assert (len(grid), len(grid[0])) == (6, 8)  # 8 along the longer side, cells about square
    left, top, right, bottom = seen
    assert (left, top, right, bottom) == pytest.approx((106.67, 26.67, 533.33, 453.33), abs=0.01)
    for r, row in enumerate(grid):
        for c, value in enumerate(row):
            x0, x1, y0, y1 = c * 80, (c + 1) * 80, r * 80, (r + 1) * 80
            outside = x1 <= left or x0 >= right or y1 <= top or y0 >= bottom
            assert (value is None) == outside, (r, c)
    # The corner (533, 27) is in row 0, column 6; that cell is the hottest, scaled to 1.
    hottest = max((v, r, c) for r, row in enumerate(grid) for c, v in enumerate(row) if v is not None)
    assert hottest == (1.0, 0, 6)
    x, y = e.peak()
    assert left + (right - left) * 56 / 64 < x < right and top < y < top + (bottom - top) * 8 / 64


@pytest.mark.parametrize("size", [(640, 480), (481, 997), (1000, 200)])
def test_the_crop_box_is_where_the_crop_takes_its_pixels(size: tuple[int, int]) -> None:
    """A picture whose red channel is its x and green its y: the crop's edges carry the
    values of the box's edges."""
    w, h = size
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    arr = np.stack([(xs + 0.5) * 255 / w, (ys + 0.5) * 255 / h, np.zeros_like(xs, dtype=float)], axis=-1)
    img = Image.fromarray(arr.round().astype(np.uint8), "RGB")
    pre = Preprocessor(preprocessing_spec(resize=72, crop=64))
    crop = pre.crop(img).to(torch.float32)
    left, top, right, bottom = pre.crop_box(w, h)
    side = 64
    # The crop's first and last pixel centres, in the picture's pixels.
    first_x, last_x = left + (right - left) * 0.5 / side, left + (right - left) * (side - 0.5) / side
    first_y, last_y = top + (bottom - top) * 0.5 / side, top + (bottom - top) * (side - 0.5) / side
    assert float(crop[0, side // 2, 0]) == pytest.approx(first_x * 255 / w, abs=1.5)
    assert float(crop[0, side // 2, -1]) == pytest.approx(last_x * 255 / w, abs=1.5)
    assert float(crop[1, 0, side // 2]) == pytest.approx(first_y * 255 / h, abs=1.5)
    assert float(crop[1, -1, side // 2]) == pytest.approx(last_y * 255 / h, abs=1.5)


def test_the_overlay_is_a_png_of_the_image_as_sent_at_most_512_pixels(tmp_path: Path, keys) -> None:
    predictor = _predictor(tmp_path, keys, "mobilenet_v3_small", "eager")
    for size, expected in (((2000, 1000), (OVERLAY_MAX_SIDE, 256)), ((96, 80), (96, 80))):
        data = image_bytes(7, size)
        e = explain(predictor, data)
        png = Image.open(io.BytesIO(overlay_png(predictor.preprocessor, data, e)))
        assert png.format == "PNG" and png.size == expected
        assert (e.width, e.height) == size
