"""decode() and Preprocessor: the allow-list, the limits, EXIF, determinism."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from model_store.errors import (
    ImageTooLarge,
    NotAnImage,
    TooManyPixels,
    TruncatedImage,
    UnsupportedImageFormat,
)
from model_store.preprocessing import DecodeLimits, Preprocessor, decode
from tests.utils.factories import image_bytes, png_bomb, preprocessing_spec


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_allowed_formats_decode_to_rgb(fmt: str) -> None:
    img = decode(image_bytes(1, (50, 40), fmt))
    assert img.mode == "RGB"
    assert img.size == (50, 40)


@pytest.mark.parametrize(("fmt", "name"), [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_other_image_formats_are_refused_by_name(fmt: str, name: str) -> None:
    with pytest.raises(UnsupportedImageFormat, match=name):
        decode(image_bytes(1, (20, 20), fmt))


@pytest.mark.parametrize("data", [b"hello world", b"\x00" * 100, b'{"image": 1}'])
def test_non_image_data_is_refused(data: bytes) -> None:
    with pytest.raises(NotAnImage):
        decode(data)


def test_empty_data_is_refused() -> None:
    with pytest.raises(NotAnImage, match="empty"):
        decode(b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_images_are_refused(fmt: str) -> None:
    data = image_bytes(2, (200, 150), fmt)
    with pytest.raises(TruncatedImage):
        decode(data[: len(data) // 2])


def test_too_many_bytes_is_refused_before_decoding() -> None:
    data = image_bytes(3, (64, 64))
    with pytest.raises(ImageTooLarge, match=f"{len(data)} bytes"):
        decode(data, DecodeLimits(max_bytes=len(data) - 1))


def test_decompression_bomb_is_refused_from_the_header_alone() -> None:
    bomb = png_bomb(60_000, 60_000)  # 3.6 gigapixels in about a hundred bytes
    assert len(bomb) < 200
    with pytest.raises(TooManyPixels, match="3600000000 pixels"):
        decode(bomb)


def test_pixel_limit_is_configurable() -> None:
    with pytest.raises(TooManyPixels):
        decode(image_bytes(4, (100, 100)), DecodeLimits(max_pixels=9_999))
    assert decode(image_bytes(4, (100, 100)), DecodeLimits(max_pixels=10_000)).size == (100, 100)


def _with_orientation(orientation: int) -> bytes:
    img = Image.new("RGB", (60, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def test_exif_orientation_is_applied() -> None:
    assert decode(_with_orientation(1)).size == (60, 20)
    assert decode(_with_orientation(6)).size == (20, 60)  # rotated 90° as the camera meant
    assert decode(_with_orientation(6), exif=False).size == (60, 20)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_colour_modes_become_rgb(mode: str) -> None:
    img = Image.new(mode if mode != "I;16" else "I;16", (16, 16))
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if mode == "CMYK" else "PNG")
    assert decode(buf.getvalue()).mode == "RGB"


def test_preprocessor_is_deterministic_and_shaped_by_the_spec() -> None:
    pre = Preprocessor(preprocessing_spec(resize=40, crop=32))
    data = image_bytes(5, (120, 90))
    a, b = pre(data), Preprocessor(preprocessing_spec(resize=40, crop=32))(data)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)


def test_preprocessor_applies_mean_and_std() -> None:
    flat = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 0, 128)).save(flat, format="PNG")
    spec = preprocessing_spec(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0))
    x = Preprocessor(spec)(flat.getvalue())
    expected = [(1.0 - 0.5) / 0.5, (0.0 - 0.5) / 0.25, (128 / 255 - 0.5) / 1.0]
    np.testing.assert_allclose(x.mean(dim=(1, 2)).numpy(), expected, atol=1e-6)


def test_different_interpolation_gives_a_different_tensor() -> None:
    data = image_bytes(6, (200, 160))
    bilinear = Preprocessor(preprocessing_spec(interpolation="bilinear"))(data)
    bicubic = Preprocessor(preprocessing_spec(interpolation="bicubic"))(data)
    assert not torch.equal(bilinear, bicubic)  # the spec, not a default, decides


def test_spec_refuses_crop_larger_than_resize() -> None:
    with pytest.raises(ValueError, match="crop 80 is larger than resize 64"):
        preprocessing_spec(resize=64, crop=80)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_corrupted_images_only_ever_raise_image_errors(fmt: str) -> None:
    """Whatever bytes a client sends, decoding ends in a tensor or an ImageError (a 4xx), never a crash."""
    import random

    from model_store.errors import ImageError

    rng = random.Random(fmt)
    base = image_bytes(1, (64, 48), fmt)
    pre = Preprocessor(preprocessing_spec())
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data))
            op = rng.random()
            if op < 0.6:
                data[pos] = rng.randrange(256)
            elif op < 0.8:
                del data[pos : pos + rng.randint(1, 50)]
            else:
                data[pos:pos] = rng.randbytes(rng.randint(1, 20))
        try:
            assert pre(bytes(data)).shape == (3, 64, 64)
            outcomes["decoded"] += 1
        except ImageError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0  # the mutations really did break images
