"""The one path from image bytes to the model's input tensor.

Training validation/test data, export's reference outputs, the service's requests and
`/parity` all call `Preprocessor`, built from the bundle's `PreprocessingSpec`. Training
augmentation works on the decoded image and then calls `Preprocessor.transform`, so the
tensor-making steps are shared too.

Everything runs on the CPU, on uint8 data until the final normalisation, so the same
bytes give the same tensor bit for bit on any machine with the same library versions.

Bounded work: `inspect` reads only the header and refuses, before any pixel is decoded,
an image whose decode *or any later step* would exceed the pixel limit. Resizing the
shorter side to `resize` multiplies the longer one, so an image of 300000x1 pixels (a
kilobyte as PNG) is refused for what its resize would cost, not just for its own size.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from model_store.errors import (
    AspectRatioTooLarge,
    ImageTooLarge,
    NotAnImage,
    TooManyPixels,
    TruncatedImage,
    UnsupportedImageFormat,
    UnsupportedImageMode,
)
from model_store.manifest import PreprocessingSpec
from model_store.monitoring import ImageStats, image_stats
from model_store.structure import check_structure

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
# Pillow opens a JPEG that carries an MP index (phones write them: a second, smaller image
# after the first) as "MPO". Its first image is an ordinary JPEG and is decoded as one, DCT
# scaling included, so the same pixels give the same probability.
_JPEG_FORMATS = ("JPEG", "MPO")

# Magic numbers of formats a station might send by mistake: named in the error so the
# operator knows what to change, but never handed to a decoder.
_KNOWN_OTHER_FORMATS = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"%PDF", "PDF"),
)

_INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}

# Modes JPEG, PNG and WebP decode to, and how each becomes 8-bit RGB. Anything else is
# refused rather than guessed at.
_EIGHT_BIT_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"}
# 16-bit greyscale PNG. PIL's convert("RGB") clips these to 255 (a white image), so they
# are scaled by their high byte, as PIL itself does for 16-bit colour PNGs.
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I"}


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on what a client may make us decode."""

    max_bytes: int = 20 * 1024 * 1024  # 20 MiB: a 12 MP JPEG is ~5 MiB
    max_pixels: int = 40_000_000  # 40 MP: ~120 MB as RGB; beyond is a bomb or a mistake


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, once it passed the limits."""

    format: str
    width: int
    height: int
    scans: int = 1  # a progressive JPEG's scans; each is a pass over every coefficient

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decode_work(self) -> int:
        """Pixels, weighted for the extra passes of a many-scan progressive JPEG (what
        admission counts): libjpeg's own progressive mode (10 scans) counts as 1x, the
        most scans accepted (64) as 5x."""
        return self.pixels * (1 + self.scans // 16)


def _open(data: bytes, limits: DecodeLimits, resize: int | None) -> tuple[Image.Image, int]:
    """Open lazily (header only) and apply every limit that the header can decide; returns
    the image and its scan count."""
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    if not data:
        raise NotAnImage("image is empty (0 bytes)")
    structure = check_structure(data)  # bounded: before Pillow walks markers and chunks in Python
    try:
        img: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        for magic, name in _KNOWN_OTHER_FORMATS:
            if data.startswith(magic):
                raise UnsupportedImageFormat(f"{name} images are not accepted; send JPEG, PNG or WebP") from None
        raise NotAnImage("data is not a JPEG, PNG or WebP image") from None
    except Image.DecompressionBombError as exc:
        # PIL's own guard fires at open for > 2x its global limit; ours is stricter anyway.
        raise TooManyPixels(f"{exc}; the limit is {limits.max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise TruncatedImage(f"image header is corrupt: {exc}") from None

    width, height = img.size
    if width <= 0 or height <= 0:
        raise NotAnImage(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise TooManyPixels(
            f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels} pixels"
        )
    if resize is not None:
        short, long = min(width, height), max(width, height)
        resized = resize * math.ceil(resize * long / short)
        if resized > limits.max_pixels:
            raise AspectRatioTooLarge(
                f"image is {width}x{height}: resizing its shorter side to {resize} would make {resized} pixels; "
                f"the limit is {limits.max_pixels} (aspect ratio at most {limits.max_pixels // resize**2}:1)"
            )
    return img, structure.scans


def inspect(data: bytes, limits: DecodeLimits | None = None, *, resize: int | None = None) -> ImageInfo:
    """The header's format and size, after every check that needs no decoding (~30 µs).

    The service calls this before queueing an image, so bad input is refused at once and
    admission control can count the decode work an image will cost.
    """
    img, scans = _open(data, limits or DecodeLimits(), resize)
    fmt = "JPEG" if img.format in _JPEG_FORMATS else img.format or "?"
    return ImageInfo(fmt, img.width, img.height, scans)


def decode(
    data: bytes,
    limits: DecodeLimits | None = None,
    *,
    exif: bool = True,
    resize: int | None = None,
    jpeg_dct_scaling: bool = False,
) -> Image.Image:
    """Decode image bytes into an RGB PIL image, refusing anything outside the allow-list.

    Args:
        data: the bytes a station sends (JPEG, PNG or WebP).
        limits: byte and pixel bounds; defaults to `DecodeLimits()`.
        exif: apply the EXIF orientation tag, as cameras expect viewers to.
        resize: the shorter side the image will be resized to; bounds the work of that step.
        jpeg_dct_scaling: decode JPEGs at the smallest 1/2, 1/4, 1/8 scale whose shorter
            side is still at least `resize` (libjpeg-turbo scales in the DCT domain).

    Raises:
        ImageTooLarge, TooManyPixels, AspectRatioTooLarge, UnsupportedImageFormat,
        UnsupportedImageMode, NotAnImage, TruncatedImage.
    """
    img, _ = _open(data, limits or DecodeLimits(), resize)
    if jpeg_dct_scaling and resize is not None and img.format in _JPEG_FORMATS:
        # PIL picks the largest scale s in (8, 4, 2, 1) with width // resize >= s and
        # height // resize >= s, so the shorter side stays >= resize.
        img.draft("RGB", (resize, resize))
    try:
        with warnings.catch_warnings():
            # Our own pixel limit above is the bomb guard; PIL's warning would be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise TruncatedImage(f"image data is truncated or corrupt: {exc}") from None

    if exif:
        try:
            img = ImageOps.exif_transpose(img)
        except (OSError, SyntaxError, ValueError, KeyError, TypeError) as exc:
            raise TruncatedImage(f"image EXIF data is corrupt: {exc}") from None
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_MODES:
        high = (np.asarray(img).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return Image.fromarray(high, "L").convert("RGB")
    if mode not in _EIGHT_BIT_MODES:
        raise UnsupportedImageMode(f"images in PIL mode {mode!r} are not accepted; send 8- or 16-bit greyscale or RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")  # alpha is dropped: the colours under it are what the camera saw


class Preprocessor:
    """Bytes → normalised float tensor [3, crop, crop], exactly as the bundle specifies.

    Example:
        pre = Preprocessor(manifest.preprocessing)
        x = pre(open("parcel.jpg", "rb").read())
    """

    def __init__(self, spec: PreprocessingSpec, limits: DecodeLimits | None = None) -> None:
        self.spec = spec
        self.limits = limits or DecodeLimits()
        self._mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)

    def inspect(self, data: bytes) -> ImageInfo:
        return inspect(data, self.limits, resize=self.spec.resize)

    def decode(self, data: bytes) -> Image.Image:
        spec = self.spec
        return decode(
            data,
            self.limits,
            exif=spec.exif_orientation,
            resize=spec.resize,
            jpeg_dct_scaling=spec.jpeg_dct_scaling,
        )

    def crop(self, img: Image.Image) -> torch.Tensor:
        """Decoded RGB image → the uint8 [3, crop, crop] the model sees, before normalising."""
        spec = self.spec
        x: torch.Tensor = F.pil_to_tensor(img)  # uint8 [3, H, W]
        x = F.resize(
            x,
            [spec.resize],
            interpolation=_INTERPOLATION[spec.interpolation],
            antialias=spec.antialias,
        )
        cropped: torch.Tensor = F.center_crop(x, [spec.crop, spec.crop])
        return cropped

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Where `crop` takes the model's input from in a decoded image of `width` x `height`:
        (left, top, right, bottom) in that image's pixels. The rest is never seen by the
        model. (torchvision's own arithmetic: the shorter side resized to `resize`, the
        longer to int(resize * long / short); the crop's corner rounded to the nearest pixel.)"""
        size, crop = self.spec.resize, self.spec.crop
        short, long = min(width, height), max(width, height)
        new_w, new_h = (size, int(size * long / short)) if width <= height else (int(size * long / short), size)
        top, left = round((new_h - crop) / 2.0), round((new_w - crop) / 2.0)
        sx, sy = width / new_w, height / new_h
        return left * sx, top * sy, (left + crop) * sx, (top + crop) * sy

    def normalize(self, crop: torch.Tensor) -> torch.Tensor:
        return (crop.to(torch.float32) / 255.0 - self._mean) / self._std

    def transform(self, img: Image.Image) -> torch.Tensor:
        """Decoded RGB image → model input. Deterministic; no randomness here, ever."""
        return self.normalize(self.crop(img))

    def prepare(self, data: bytes, stats_stride: int = 1) -> tuple[torch.Tensor, ImageStats]:
        """Bytes → (model input, the drift features of what the model sees): the service's path.
        `stats_stride`: the bundle's `monitoring.stats_stride`."""
        crop = self.crop(self.decode(data))
        return self.normalize(crop), image_stats(crop, stats_stride)

    def __call__(self, data: bytes) -> torch.Tensor:
        return self.transform(self.decode(data))
