"""Deterministic camera-like JPEGs: a procedural parcel scene at 1280x720 with sensor noise.

About 236 KB each at quality 90, like the scanning stations' photos; the same seed gives
the same bytes, so runs on different days decode exactly the same work.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from training.synth import render

CAMERA = (1280, 720)


def camera_jpeg(seed: int, size: tuple[int, int] = CAMERA, quality: int = 90, sensor_noise: float = 5.0) -> bytes:
    img = render(seed, damaged=seed % 2 == 1, size=size)
    # Extra sensor noise (grey level sigma) brings the files to the size real cameras write.
    noisy = np.asarray(img, dtype=np.float32) + np.random.default_rng(seed).normal(
        0, sensor_noise, (size[1], size[0], 3)
    )
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def camera_jpegs(count: int = 64) -> list[bytes]:
    return [camera_jpeg(seed) for seed in range(count)]
