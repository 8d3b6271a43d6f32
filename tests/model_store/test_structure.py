"""Files whose structure, not their pixels, would cost the front or a worker seconds: refused
before Pillow or libjpeg walks them, and ordinary camera files unaffected."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_store import structure
from model_store.errors import ImageTooComplex, UnsupportedImageMode
from model_store.preprocessing import Preprocessor, decode, inspect
from tests.utils import crafted
from tests.utils.factories import image_bytes, preprocessing_spec

MIB = 1024 * 1024


@pytest.fixture
def pillow_opens(monkeypatch) -> list[int]:
    """Counts Image.open calls: a refused file must never reach Pillow's Python walk."""
    calls: list[int] = []
    real = Image.open

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting)
    return calls


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (crafted.jpeg_with_markers, "markers before its image data"),
        (crafted.jpeg_with_fill, "stray or fill bytes"),
        (crafted.png_with_chunks, "chunks that are not image data"),
    ],
    ids=["jpeg-markers", "jpeg-fill", "png-chunks"],
)
def test_padded_headers_are_refused_before_pillow_walks_them(make, words, pillow_opens) -> None:
    data = make(2 * MIB)  # the attack used 20 MiB; 2 MiB already costs Pillow ~0.4 s
    with pytest.raises(ImageTooComplex, match=words):
        inspect(data)
    assert pillow_opens == []


def test_a_progressive_jpeg_with_thousands_of_scans_is_refused_but_libjpegs_own_is_not() -> None:
    ordinary = crafted.progressive_jpeg(0)
    assert inspect(ordinary).scans == 10  # libjpeg's progressive mode
    decode(ordinary)
    with pytest.raises(ImageTooComplex, match="scans"):
        inspect(crafted.progressive_jpeg(2000))
    with pytest.raises(ImageTooComplex, match="scans"):
        decode(crafted.progressive_jpeg(2000))  # the worker refuses it too, whoever sent it


def test_many_scans_count_as_more_decode_work_in_admission() -> None:
    assert inspect(crafted.progressive_jpeg(0)).decode_work == 256 * 256
    assert inspect(crafted.progressive_jpeg(50)).decode_work == 256 * 256 * (1 + 60 // 16)


def test_a_12_bit_jpeg_is_named_as_such() -> None:
    with pytest.raises(UnsupportedImageMode, match="12-bit JPEGs are not accepted"):
        inspect(crafted.jpeg_with_precision(12))


def test_an_mpo_is_decoded_as_the_jpeg_it_is() -> None:
    """Phones write MPO; Pillow opens it as another format, which skipped DCT scaling and
    moved probabilities by 1.8e-4. The same picture must give the same tensor."""
    mpo, jpg = crafted.mpo_and_jpeg()
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    pre = Preprocessor(preprocessing_spec(resize=72, crop=64, jpeg_dct_scaling=True))
    assert inspect(mpo).format == "JPEG"  # captured as .jpg, counted as JPEG
    assert torch.equal(pre(mpo), pre(jpg))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_ordinary_files_pass_the_walk(fmt) -> None:
    data = image_bytes(7, (320, 240), fmt)
    assert structure.check_structure(data).scans == 1
    assert inspect(data).pixels == 320 * 240


def test_the_walk_is_bounded_whatever_the_size(pillow_opens) -> None:
    """Markers and chunks are counted only up to the limit: a 20 MiB file is refused after
    at most a few dozen steps, not after walking it."""
    for make in (crafted.jpeg_with_markers, crafted.png_with_chunks):
        with pytest.raises(ImageTooComplex):
            structure.check_structure(make(20 * MIB))


def test_an_arithmetic_coded_jpeg_with_restart_markers_decodes_like_its_huffman_twin() -> None:
    """`jpegtran -arithmetic -restart 1B` of huffman.jpg (lossless: the same coefficients).
    Its restart markers sit inside the scan; the walk must not mistake them for structure."""
    data = Path(__file__).parent / "data"
    arithmetic = (data / "arithmetic-restart.jpg").read_bytes()
    assert b"\xff\xdd" in arithmetic and b"\xff\xc9" in arithmetic  # DRI, and SOF9 (arithmetic)
    assert np.array_equal(np.asarray(decode(arithmetic)), np.asarray(decode((data / "huffman.jpg").read_bytes())))
