"""Data sets in ImageFolder layout, the split manifest, and the training Dataset.

The split is a pure function of file contents, labels, seed and fractions: identical
content is one group, so the same picture can never sit in two splits. A run records the
manifest's sha256 and refuses a data set whose files no longer match it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image, ImageEnhance
from torch.utils.data import Dataset

from model_store.preprocessing import Preprocessor

Split = Literal["train", "val", "test"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
SPLIT_MANIFEST_VERSION = 1


class DataError(Exception):
    """The data set cannot be used as it is; the message says why."""


@dataclass(frozen=True)
class Item:
    path: str  # relative to the data root, POSIX style
    sha256: str
    label: str
    split: Split


@dataclass(frozen=True)
class SplitManifest:
    items: list[Item]
    seed: int
    val_fraction: float
    test_fraction: float
    labels: tuple[str, str]  # (negative, positive)

    def to_json_bytes(self) -> bytes:
        data = {
            "version": SPLIT_MANIFEST_VERSION,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "labels": list(self.labels),
            "files": [vars(i) for i in self.items],
        }
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json_bytes()).hexdigest()

    @property
    def fingerprint(self) -> str:
        """The data set's identity: contents and labels, independent of the split."""
        lines = sorted(f"{i.path}\t{i.sha256}\t{i.label}" for i in self.items)
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    def select(self, split: Split) -> list[Item]:
        return [i for i in self.items if i.split == split]

    @classmethod
    def from_json_bytes(cls, raw: bytes) -> SplitManifest:
        data = json.loads(raw)
        if data.get("version") != SPLIT_MANIFEST_VERSION:
            raise DataError(f"split manifest version {data.get('version')!r} is not supported")
        return cls(
            items=[Item(**f) for f in data["files"]],
            seed=data["seed"],
            val_fraction=data["val_fraction"],
            test_fraction=data["test_fraction"],
            labels=(data["labels"][0], data["labels"][1]),
        )

    def write(self, path: Path) -> None:
        path.write_bytes(self.to_json_bytes())
        path.with_name(path.name + ".sha256").write_text(self.sha256 + "\n")


def scan(root: Path, labels: tuple[str, str]) -> list[tuple[str, str, str]]:
    """(relative path, sha256, label) for every image under root/<label>/."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist")
    found = []
    for label in labels:
        d = root / label
        if not d.is_dir():
            raise DataError(f"{root} has no {label}/ folder (ImageFolder layout: one folder per label)")
        for p in sorted(d.rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                found.append((p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest(), label))
    if not found:
        raise DataError(f"no images under {root}")
    extra = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in labels)
    if extra:
        raise DataError(f"{root} has folders {extra} that are neither of the labels {list(labels)}")
    return found


def make_split(
    root: Path, labels: tuple[str, str], seed: int, val_fraction: float, test_fraction: float
) -> SplitManifest:
    """Deterministic, stratified, leak-free train/val/test split of an ImageFolder tree."""
    files = scan(root, labels)
    by_content: dict[str, set[str]] = defaultdict(set)
    for _, digest, label in files:
        by_content[digest].add(label)
    conflicts = [d for d, ls in by_content.items() if len(ls) > 1]
    if conflicts:
        paths = sorted(p for p, d, _ in files if d in conflicts)[:4]
        raise DataError(f"the same image is labelled both {labels[0]} and {labels[1]}: {paths}")

    split_of: dict[str, Split] = {}
    for label in labels:
        groups = sorted({d for _, d, lbl in files if lbl == label})
        random.Random(f"{seed}:{label}").shuffle(groups)
        n_test = round(len(groups) * test_fraction)
        n_val = round(len(groups) * val_fraction)
        for i, digest in enumerate(groups):
            split_of[digest] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    items = [Item(p, d, lbl, split_of[d]) for p, d, lbl in files]
    manifest = SplitManifest(items, seed, val_fraction, test_fraction, labels)
    check_no_leakage(manifest)
    return manifest


def check_no_leakage(manifest: SplitManifest) -> None:
    seen: dict[str, str] = {}
    for item in manifest.items:
        other = seen.setdefault(item.sha256, item.split)
        if other != item.split:
            raise DataError(f"leakage: {item.path} has the same content as a file in the {other} split")


def check_matches(manifest: SplitManifest, root: Path) -> None:
    """Refuse a data set whose files differ from the manifest a run was started with."""
    current = {(p, d, lbl) for p, d, lbl in scan(root, manifest.labels)}
    recorded = {(i.path, i.sha256, i.label) for i in manifest.items}
    if current != recorded:
        changed = sorted({p for p, _, _ in current ^ recorded})
        raise DataError(
            f"data in {root} no longer matches this run's split manifest: "
            f"{len(changed)} file(s) added, removed or changed, e.g. {changed[:3]}"
        )
    check_no_leakage(manifest)


@dataclass(frozen=True)
class Augment:
    """Training-only augmentation, applied to the decoded image before the shared transform."""

    hflip: bool = True
    rotate_degrees: float = 0.0
    brightness: float = 0.0  # max relative change, e.g. 0.2 = ±20%
    contrast: float = 0.0
    crop_scale: tuple[float, float] = (1.0, 1.0)  # random crop area fraction

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        if self.crop_scale[0] < 1.0:
            area = rng.uniform(*self.crop_scale)
            w, h = img.size
            cw, ch = max(1, round(w * area**0.5)), max(1, round(h * area**0.5))
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            img = img.crop((x, y, x + cw, y + ch))
        if self.hflip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.rotate_degrees:
            img = img.rotate(rng.uniform(-self.rotate_degrees, self.rotate_degrees), Image.Resampling.BILINEAR)
        if self.brightness:
            img = ImageEnhance.Brightness(img).enhance(1 + rng.uniform(-self.brightness, self.brightness))
        if self.contrast:
            img = ImageEnhance.Contrast(img).enhance(1 + rng.uniform(-self.contrast, self.contrast))
        return img


class ImageDataset(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """(input tensor, target 0/1, index) per item, through the bundle's own Preprocessor.

    Augmentation randomness is a pure function of (seed, epoch, index), never of worker
    state, so a resumed run with any number of workers sees exactly the same inputs.
    """

    def __init__(
        self,
        root: Path,
        items: list[Item],
        preprocessor: Preprocessor,
        positive_label: str,
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.items = items
        self.preprocessor = preprocessor
        self.positive_label = positive_label
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def read(self, index: int) -> bytes:
        return (self.root / self.items[index].path).read_bytes()

    def target(self, index: int) -> int:
        return int(self.items[index].label == self.positive_label)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        img = self.preprocessor.decode(self.read(index))
        if self.augment is not None:
            img = self.augment(img, random.Random(f"{self.seed}:{self.epoch}:{index}"))
        x = self.preprocessor.transform(img)
        return x, torch.tensor(float(self.target(index))), index


def summary(manifest: SplitManifest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        items = manifest.select(split)
        out[split] = {label: sum(i.label == label for i in items) for label in manifest.labels}
    return out
