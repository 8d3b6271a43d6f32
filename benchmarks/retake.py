"""`python -m benchmarks.retake`: how often a bundle answers `retake`, on its own test split
(wrongly: these are photos like the validated ones) and on frames it should not judge.

    python -m benchmarks.retake --run demo/run --bundle demo/store/versions/demo-1 \\
        --public-key demo/keys/public.pem

Each family of frames is made from the test split's own photos (or drawn at their size),
so only what the family changes differs: black and covered lenses, blank or overexposed
frames, blur, frames with no parcel (an empty conveyor, a sheet of paper, sensor noise),
cut strips and thumbnails. The decision is the service's (`model_store.domain.verdict` on
the features the inference workers compute), so the figures are what stations would get.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from model_store import domain
from model_store.bundle import load_bundle
from model_store.preprocessing import Preprocessor

Family = Callable[[Image.Image, random.Random], Image.Image]


def _say(line: str, progress: bool = False) -> None:
    """The table to stdout; progress to stderr."""
    (sys.stderr if progress else sys.stdout).write(line + "\n")


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _noisy(size: tuple[int, int], level: float, rng: random.Random, sigma: float = 3.0) -> Image.Image:
    """A flat frame at grey `level` with a sensor's noise (a real black frame is not all zeros)."""
    gen = np.random.default_rng(rng.randrange(2**32))
    arr = np.clip(level + gen.normal(0, sigma, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _empty_conveyor(photo: Image.Image, rng: random.Random) -> Image.Image:
    """The belt with no parcel: a background colour, seams and the camera's noise."""
    w, h = photo.size
    base = rng.choice([(70, 70, 75), (110, 105, 100), (40, 45, 50), (150, 150, 140), (95, 85, 70)])
    img = Image.new("RGB", (w, h), base)
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 4)):
        y = rng.uniform(0, h)
        d.line([(0, y), (w, y + rng.uniform(-10, 10))], fill=tuple(max(0, c - 25) for c in base), width=2)
    arr = np.asarray(img, dtype=np.float32) + np.random.default_rng(rng.randrange(2**32)).normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _paper(photo: Image.Image, rng: random.Random) -> Image.Image:
    """A sheet of paper held to the camera: white with lines of dark text."""
    w, h = photo.size
    img = Image.new("RGB", (w, h), (rng.randint(225, 250),) * 3)
    d = ImageDraw.Draw(img)
    for y in range(rng.randint(8, 16), h - 8, rng.randint(9, 14)):
        x = rng.randint(6, 16)
        while x < w - 20:
            word = rng.randint(8, 30)
            d.rectangle([x, y, min(x + word, w - 8), y + 3], fill=(30, 30, 30))
            x += word + rng.randint(4, 8)
    return img


FAMILIES: dict[str, Family] = {
    "black (lens covered, light off)": lambda p, r: _noisy(p.size, r.uniform(0, 12), r),
    "blank (flat grey to white)": lambda p, r: _noisy(p.size, r.uniform(60, 250), r),
    "overexposed (x4 light)": lambda p, r: Image.fromarray(
        np.clip(np.asarray(p, dtype=np.float32) * 4, 0, 255).astype(np.uint8)
    ),
    "blurred (Gaussian, 2% of width)": lambda p, r: p.filter(ImageFilter.GaussianBlur(p.size[0] * 0.02)),
    "blurred (Gaussian, 1% of width)": lambda p, r: p.filter(ImageFilter.GaussianBlur(p.size[0] * 0.01)),
    "no parcel: empty conveyor": _empty_conveyor,
    "no parcel: a sheet of paper": _paper,
    "no parcel: sensor noise": lambda p, r: _noisy(p.size, r.uniform(60, 200), r, sigma=60),
    "cut strip (20:1)": lambda p, r: p.resize((p.size[0], max(1, p.size[0] // 20))),
    "thumbnail (1/8 size)": lambda p, r: p.resize((max(1, p.size[0] // 8), max(1, p.size[1] // 8))),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.retake", description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="the training run (its eval.json names the test split)")
    ap.add_argument("--bundle", type=Path, required=True, help="the bundle exported from it (a directory)")
    ap.add_argument("--public-key", type=Path, required=True)
    ap.add_argument("--per-family", type=int, default=100, help="frames made per family")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = ap.parse_args(argv)

    bundle = load_bundle(args.bundle, args.public_key)
    m = bundle.manifest
    bounds = m.monitoring.domain if m.monitoring is not None else None
    if bounds is None:
        _say(f"error: {args.bundle} has no validated ranges (exported before retake existed)", progress=True)
        return 2
    pre = Preprocessor(m.preprocessing)
    stride = m.monitoring.stats_stride if m.monitoring is not None else 1

    def retake(data: bytes) -> domain.Retake | None:
        info = pre.inspect(data)
        _, stats = pre.prepare(data, stride)
        return domain.reason(bounds, domain.measures(stats, info.width, info.height))

    evaluation = json.loads((args.run / "eval.json").read_text())
    data_dir = Path(json.loads((args.run / "run.json").read_text())["data_dir"])
    test = evaluation["predictions"]["test"]
    figures: dict[str, dict[str, Any]] = {}
    by_label: dict[str, list[bool]] = {}
    for r in test:
        by_label.setdefault(r["label"], []).append(retake((data_dir / r["path"]).read_bytes()) is not None)
    every = [x for v in by_label.values() for x in v]
    figures["test split (should be judged)"] = {"frames": len(every), "retake": sum(every)}
    for label, flags in sorted(by_label.items()):
        figures[f"  of which {label}"] = {"frames": len(flags), "retake": sum(flags)}
    _say(f"test split: {sum(every)} of {len(every)} sent to retake", progress=True)

    rng = random.Random(0)
    photos = [data_dir / r["path"] for r in test]
    for name, make in FAMILIES.items():
        caught, why = 0, dict[str, int]()
        for i in range(args.per_family):
            photo = Image.open(photos[i % len(photos)]).convert("RGB")
            r = retake(_jpeg(make(photo, rng)))
            if r is not None:
                caught += 1
                why[r.feature] = why.get(r.feature, 0) + 1
        figures[name] = {"frames": args.per_family, "retake": caught, "by_feature": why}
        _say(f"{name}: {caught} of {args.per_family}", progress=True)

    _say(f"\n{m.name} {m.version}: decision 'retake' per family (margin {bounds.margin})")
    _say(f"{'frames':<40} {'n':>5} {'retake':>8}  first feature out of range")
    for name, f in figures.items():
        n, k = f["frames"], f["retake"]
        feats = ", ".join(f"{a} {b}" for a, b in sorted(f.get("by_feature", {}).items()))
        _say(f"{name:<40} {n:>5} {k / n:>8.1%}  {feats}")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
