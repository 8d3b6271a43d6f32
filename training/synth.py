"""Procedural demo data: camera-like JPEG photos of parcels, some damaged.

It exists so the demo and the tests need no download. Damage is deliberately varied in
size and contrast, and intact parcels carry look-alikes (straps, shadows, printed marks),
so a model does not reach 100% in one epoch. Same seed, same bytes.

Where the damage was drawn on each damaged photo is recorded beside the images
(`damage_regions.json`, see `REGIONS_FILE`): the ground truth that explanations are
measured against (`training.explain`). Recording it draws nothing and takes no random
numbers, so the photos are the bytes they were before it existed.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Point = tuple[float, float]
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

REGIONS_FILE = "damage_regions.json"  # at the data root, beside intact/ and damaged/
REGIONS_VERSION = 1

WIDTH, HEIGHT = 256, 192
_CARDBOARD = [(176, 134, 88), (196, 154, 108), (160, 120, 80), (210, 180, 140), (186, 140, 96)]
_OTHER_BOX = [(235, 235, 230), (120, 120, 125), (90, 60, 40)]
_BACKGROUNDS = [(70, 70, 75), (110, 105, 100), (40, 45, 50), (150, 150, 140), (95, 85, 70)]


def _jitter(rng: random.Random, c: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    r, g, b = (max(0, min(255, v + rng.randint(-amount, amount))) for v in c)
    return r, g, b


def _box_geometry(rng: random.Random) -> tuple[list[Point], list[Point], list[Point]]:
    """Front face and top face of a box seen slightly from above, with perspective."""
    cx, cy = WIDTH / 2 + rng.uniform(-30, 30), HEIGHT / 2 + rng.uniform(-15, 20)
    w, h = rng.uniform(110, 190), rng.uniform(65, 115)
    depth = rng.uniform(15, 40)
    skew = rng.uniform(-18, 18)
    tilt = math.radians(rng.uniform(-12, 12))

    def rot(x: float, y: float) -> Point:
        dx, dy = x - cx, y - cy
        return (
            cx + dx * math.cos(tilt) - dy * math.sin(tilt),
            cy + dx * math.sin(tilt) + dy * math.cos(tilt),
        )

    front = [
        (cx - w / 2, cy - h / 2 + depth),
        (cx + w / 2, cy - h / 2 + depth),
        (cx + w / 2, cy + h / 2),
        (cx - w / 2, cy + h / 2),
    ]
    top = [(cx - w / 2 + skew, cy - h / 2), (cx + w / 2 + skew, cy - h / 2), front[1], front[0]]
    full = [top[0], top[1], front[1], front[2], front[3], front[0]]
    return [rot(*p) for p in front], [rot(*p) for p in top], [rot(*p) for p in full]


def _inside(rng: random.Random, poly: list[Point], margin: float = 0.2) -> Point:
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    return (
        rng.uniform(min(xs) + (max(xs) - min(xs)) * margin, max(xs) - (max(xs) - min(xs)) * margin),
        rng.uniform(min(ys) + (max(ys) - min(ys)) * margin, max(ys) - (max(ys) - min(ys)) * margin),
    )


def _blob(rng: random.Random, c: Point, r: float, n: int = 14) -> list[Point]:
    return [
        (
            c[0] + r * rng.uniform(0.6, 1.3) * math.cos(2 * math.pi * i / n),
            c[1] + r * rng.uniform(0.6, 1.3) * math.sin(2 * math.pi * i / n),
        )
        for i in range(n)
    ]


def _bounds(points: list[Point], pad: float = 0.0) -> Box:
    """The box around `points`, `pad` pixels wider on each side (a line's half width)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad


def _to_photo(box: Box, width: int, height: int) -> Box:
    """A canvas box in the pixels of a `width` x `height` photo, clipped to it (0.1 px)."""
    sx, sy = width / WIDTH, height / HEIGHT
    x0, y0, x1, y1 = box
    return (
        round(max(0.0, x0 * sx), 1),
        round(max(0.0, y0 * sy), 1),
        round(min(float(width), x1 * sx), 1),
        round(min(float(height), y1 * sy), 1),
    )


# --- damage: each draws onto the box; severity in (0, 1] scales size and contrast. Each
# returns the box around what it drew (canvas pixels), computed from its geometry alone. ---


def _dent(d: ImageDraw.ImageDraw, rng: random.Random, face: list[Point], s: float) -> Box:
    c = _inside(rng, face)
    r = 6 + 16 * s
    d.ellipse([c[0] - r, c[1] - r * 0.6, c[0] + r, c[1] + r * 0.6], fill=(0, 0, 0, int(60 + 100 * s)))
    d.arc(
        [c[0] - r, c[1] - r * 0.6, c[0] + r, c[1] + r * 0.6], 200, 340, fill=(255, 255, 255, int(40 + 60 * s)), width=2
    )
    return c[0] - r, c[1] - r * 0.6, c[0] + r, c[1] + r * 0.6


def _crushed_corner(d: ImageDraw.ImageDraw, rng: random.Random, face: list[Point], s: float) -> Box:
    corner = face[rng.randrange(len(face))]
    size = 8 + 22 * s
    cut = [
        corner,
        (corner[0] + rng.uniform(-1, 1) * size, corner[1] + size * 0.8),
        (corner[0] + size * rng.choice([-1, 1]), corner[1] + rng.uniform(-0.3, 0.3) * size),
    ]
    d.polygon(cut, fill=(30, 25, 20, int(90 + 100 * s)))
    drawn = list(cut)
    for _ in range(2 + int(3 * s)):
        a = (corner[0] + rng.uniform(-size, size), corner[1] + rng.uniform(-size, size))
        d.line([corner, a], fill=(40, 30, 20, int(80 + 100 * s)), width=1)
        drawn.append(a)
    return _bounds(drawn, 1)


def _tear(d: ImageDraw.ImageDraw, rng: random.Random, face: list[Point], s: float) -> Box:
    x, y = _inside(rng, face)
    pts = [(x, y)]
    for _ in range(4 + int(6 * s)):
        x += rng.uniform(3, 8) * rng.choice([-1, 1])
        y += rng.uniform(-5, 5)
        pts.append((x, y))
    d.line(pts, fill=(35, 25, 15, int(120 + 120 * s)), width=1 + int(2 * s))
    d.line([(p[0], p[1] + 2) for p in pts], fill=(235, 220, 190, int(60 + 100 * s)), width=1)
    return _bounds([*pts, *((p[0], p[1] + 2) for p in pts)], 2)


def _hole(d: ImageDraw.ImageDraw, rng: random.Random, face: list[Point], s: float) -> Box:
    c = _inside(rng, face)
    blob = _blob(rng, c, 4 + 9 * s)
    d.polygon(blob, fill=(15, 12, 10, int(150 + 100 * s)))
    return _bounds(blob)


def _water_stain(d: ImageDraw.ImageDraw, rng: random.Random, face: list[Point], s: float) -> Box:
    c = _inside(rng, face, 0.1)
    blob = _blob(rng, c, 10 + 25 * s, 18)
    d.polygon(blob, fill=(60, 40, 20, int(40 + 60 * s)))
    d.line([*blob, blob[0]], fill=(70, 45, 20, int(40 + 70 * s)), width=2)
    return _bounds(blob, 1)


DAMAGE: dict[str, Callable[[ImageDraw.ImageDraw, random.Random, list[Point], float], Box]] = {
    "dent": _dent,
    "crushed_corner": _crushed_corner,
    "tear": _tear,
    "hole": _hole,
    "water_stain": _water_stain,
}


# --- look-alikes on intact parcels ------------------------------------------------------------


def _strap(d: ImageDraw.ImageDraw, rng: random.Random, face: list[Point]) -> None:
    x = _inside(rng, face)[0]
    ys = [p[1] for p in face]
    d.line([(x, min(ys)), (x + rng.uniform(-6, 6), max(ys))], fill=(20, 20, 20, 200), width=rng.randint(2, 4))


def _printed_mark(d: ImageDraw.ImageDraw, rng: random.Random, face: list[Point]) -> None:
    c = _inside(rng, face)
    r = rng.uniform(4, 9)
    d.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], outline=(20, 20, 60, 220), width=2)


def _soft_shadow(d: ImageDraw.ImageDraw, rng: random.Random, face: list[Point]) -> None:
    c = _inside(rng, face, 0.05)
    d.polygon(_blob(rng, c, rng.uniform(10, 25), 16), fill=(0, 0, 0, rng.randint(15, 35)))


LOOKALIKES = (_strap, _printed_mark, _soft_shadow)


def render(seed: int, damaged: bool, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Image.Image:
    """One photo of `size` pixels. The same (seed, damaged, size) always gives the same pixels.

    The scene is drawn on a 256x192 canvas and scaled to `size`; lighting, blur and sensor
    noise are then applied at the photo's own resolution, as a camera would.
    """
    return render_with_regions(seed, damaged, size)[0]


def render_with_regions(
    seed: int, damaged: bool, size: tuple[int, int] = (WIDTH, HEIGHT)
) -> tuple[Image.Image, list[Box]]:
    """`render`, plus the box of every damage drawn (photo pixels, clipped to the photo;
    none for an intact parcel). Boxes may overlap, and one may reach past the parcel's edge
    (a crushed corner): they bound the drawn marks, not the parcel."""
    rng = random.Random(seed * 2 + int(damaged))
    bg = _jitter(rng, rng.choice(_BACKGROUNDS), 20)
    img = Image.new("RGB", (WIDTH, HEIGHT), bg)
    d = ImageDraw.Draw(img, "RGBA")
    for _ in range(rng.randint(0, 4)):  # conveyor seams and clutter
        y = rng.uniform(0, HEIGHT)
        d.line(
            [(0, y), (WIDTH, y + rng.uniform(-10, 10))],
            fill=(*_jitter(rng, bg, 30), 160),
            width=rng.randint(1, 3),
        )

    front, top, full = _box_geometry(rng)
    box = _jitter(rng, rng.choice(_CARDBOARD if rng.random() < 0.85 else _OTHER_BOX), 15)
    d.polygon([(p[0] + 6, p[1] + 6) for p in full], fill=(0, 0, 0, 70))  # drop shadow
    d.polygon(front, fill=box)
    d.polygon(top, fill=tuple(min(255, int(v * 1.12)) for v in box))
    if rng.random() < 0.8:  # tape across the top and down the front
        tx = (top[0][0] + top[1][0]) / 2 + rng.uniform(-10, 10)
        tw = rng.uniform(6, 14)
        tape = (*_jitter(rng, (200, 170, 120) if rng.random() < 0.6 else (225, 225, 220), 15), 200)
        d.polygon(
            [(tx - tw, top[0][1]), (tx + tw, top[1][1]), (tx + tw, front[2][1] - 25), (tx - tw, front[3][1] - 25)],
            fill=tape,
        )
    if rng.random() < 0.75:  # shipping label with a barcode
        lx, ly = _inside(rng, front, 0.25)
        lw, lh = rng.uniform(20, 36), rng.uniform(14, 24)
        d.rectangle([lx, ly, lx + lw, ly + lh], fill=(245, 245, 240))
        for i in range(int(lw // 3)):
            if rng.random() < 0.7:
                d.line(
                    [(lx + 2 + i * 3, ly + lh * 0.5), (lx + 2 + i * 3, ly + lh - 2)],
                    fill=(10, 10, 10),
                    width=1,
                )

    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        rng.choice(LOOKALIKES)(d, rng, rng.choice([front, top]))
    boxes: list[Box] = []
    if damaged:
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            kind = rng.choice(sorted(DAMAGE))
            boxes.append(DAMAGE[kind](d, rng, rng.choice([front, front, top]), rng.uniform(0.3, 1.0)))

    # Lighting: a gradient from a random side; then camera blur, noise and exposure.
    width, height = size
    regions = [r for r in (_to_photo(b, width, height) for b in boxes) if r[2] > r[0] and r[3] > r[1]]
    if size != (WIDTH, HEIGHT):
        img = img.resize(size, Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width]
    grad = (np.cos(angle) * (xx / width - 0.5) + np.sin(angle) * (yy / height - 0.5)) * rng.uniform(0.1, 0.5)
    arr = arr * (rng.uniform(0.75, 1.2) + grad)[..., None]
    nrng = np.random.default_rng(seed)
    arr += nrng.normal(0, rng.uniform(2, 9), arr.shape)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.4:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * width / WIDTH))
    return out, regions


PHOTO_SIZE = (640, 480)  # a VGA station camera: large enough that reduced-size JPEG decoding applies


def generate(
    out: Path,
    count: int,
    seed: int,
    damaged_fraction: float = 0.5,
    size: tuple[int, int] = PHOTO_SIZE,
    on_written: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Write `count` JPEGs in ImageFolder layout (intact/, damaged/), and where the damage
    is on each damaged one (`REGIONS_FILE`). Returns per-class counts.

    `on_written(done, count)` is called after each image (progress for the command line)."""
    rng = random.Random(seed)
    counts = {"intact": 0, "damaged": 0}
    for label in counts:
        (out / label).mkdir(parents=True, exist_ok=True)
    regions: dict[str, list[list[float]]] = {}
    for i in range(count):
        damaged = rng.random() < damaged_fraction
        label = "damaged" if damaged else "intact"
        img, boxes = render_with_regions(seed * 1_000_003 + i, damaged, size)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=rng.randint(70, 95))
        name = f"{label}/parcel-{i:06d}.jpg"
        (out / name).write_bytes(buf.getvalue())
        if damaged:
            regions[name] = [list(b) for b in boxes]
        counts[label] += 1
        if on_written is not None:
            on_written(i + 1, count)
    write_regions(out, regions)
    return counts


def write_regions(root: Path, regions: dict[str, list[list[float]]]) -> None:
    """`REGIONS_FILE`: per damaged image (its path under `root`), the boxes of its damage in
    the photo's pixels, [x0, y0, x1, y1] with x1/y1 exclusive. A file, not a folder: data
    sets are read as one folder per label, and a file beside them is ignored."""
    lines = [f"  {json.dumps(name)}: {json.dumps(boxes)}" for name, boxes in sorted(regions.items())]
    (root / REGIONS_FILE).write_text(
        f'{{"version": {REGIONS_VERSION}, "box": "x0 y0 x1 y1, pixels of the stored photo", "regions": {{\n'
        + ",\n".join(lines)
        + "\n}}\n"
    )


def read_regions(root: Path) -> dict[str, list[Box]] | None:
    """The damage boxes `generate` recorded under `root`, or None where it recorded none (a
    data set from before they were recorded, or real photos). Raises ValueError on a file
    that is not what `write_regions` writes."""
    path = root / REGIONS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("version") != REGIONS_VERSION:
        raise ValueError(f"{path}: not a version {REGIONS_VERSION} damage regions file")
    out: dict[str, list[Box]] = {}
    for name, boxes in data["regions"].items():
        out[name] = [(float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in boxes]
    return out
