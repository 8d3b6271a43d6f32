"""decode() and Preprocessor: the allow-list, the limits, EXIF, determinism."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from model_store.errors import (
    AspectRatioTooLarge,
    ImageTooLarge,
    NotAnImage,
    TooManyPixels,
    TruncatedImage,
    UnsupportedImageFormat,
)
from model_store.preprocessing import DecodeLimits, Preprocessor, decode, inspect
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


def test_reduced_size_jpeg_decode_keeps_the_shorter_side_at_least_resize() -> None:
    photo = image_bytes(7, (1280, 720))
    for resize, expected in [(256, (640, 360)), (180, (320, 180)), (90, (160, 90)), (400, (1280, 720))]:
        img = decode(photo, resize=resize, jpeg_dct_scaling=True)
        assert img.size == expected, resize
        assert min(img.size) >= resize
    assert decode(photo, resize=256).size == (1280, 720)  # off: full size
    png = image_bytes(7, (1280, 720), "PNG")
    assert decode(png, resize=256, jpeg_dct_scaling=True).size == (1280, 720)  # only JPEGs scale


def test_reduced_size_decode_is_part_of_the_spec_and_deterministic() -> None:
    photo = image_bytes(8, (1280, 720))
    scaled = Preprocessor(preprocessing_spec(resize=256, crop=224, jpeg_dct_scaling=True))
    full = Preprocessor(preprocessing_spec(resize=256, crop=224))
    a, b = scaled(photo), scaled(photo)
    assert torch.equal(a, b) and a.shape == full(photo).shape == (3, 224, 224)
    assert not torch.equal(a, full(photo))  # another decode: bundles must say which one they used
    assert (a - full(photo)).abs().mean() < 0.05  # ...of the same picture


@pytest.mark.parametrize(
    ("size", "resize", "refused"),
    [((300_000, 1), 72, True), ((1, 300_000), 72, True), ((3000, 1), 256, True), ((4000, 1000), 256, False)],
)
def test_extreme_aspect_ratios_are_refused_for_what_their_resize_would_cost(
    size: tuple[int, int], resize: int, refused: bool
) -> None:
    """A 957-byte 300000x1 PNG once cost 5.7 GB: resizing its shorter side multiplies the other."""
    data = png_bomb(*size)
    if refused:
        with pytest.raises(AspectRatioTooLarge, match=f"resizing its shorter side to {resize}"):
            inspect(data, resize=resize)
        with pytest.raises(AspectRatioTooLarge):
            Preprocessor(preprocessing_spec(resize=resize, crop=min(resize, 64)))(data)
    else:
        assert inspect(data, resize=resize).pixels == size[0] * size[1]


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    """A 16-bit PNG was once scored as a white image (convert("RGB") clips I;16)."""
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    img = decode(_png(ramp))
    got = np.asarray(img)[..., 0]
    assert img.mode == "RGB"
    assert np.array_equal(got, (ramp >> 8).astype(np.uint8))  # the high byte, as PIL does for 16-bit RGB
    assert got.min() == 0 and got.max() == 255 and 120 < got.mean() < 135  # not white


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA"])
def test_every_png_mode_becomes_eight_bit_rgb(mode: str) -> None:
    img = Image.new(mode, (30, 20))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = decode(buf.getvalue())
    assert out.mode == "RGB" and out.size == (30, 20)
