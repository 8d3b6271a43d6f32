"""Factories for tests: images, manifests and signed bundles built from scratch."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from model_store.bundle import Bundle
from model_store.manifest import (
    Manifest,
    ModelSpec,
    PreprocessingSpec,
)
from model_store.preprocessing import Preprocessor
from model_store.writer import ReferenceInput, hand_made_manifest, write_bundle
from model_store.zoo import build_model
from training.loops import recalibrate_batchnorm

ZERO_SHA = "0" * 64


def image_bytes(seed: int, size: tuple[int, int] = (96, 80), fmt: str = "JPEG", **save: object) -> bytes:
    """A deterministic noisy picture in the given format."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 255, size=3)
    arr = np.clip(base + rng.normal(0, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format=fmt, **save)
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header announcing `width` x `height` RGB pixels, with a tiny compressed body."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def preprocessing_spec(**overrides: object) -> PreprocessingSpec:
    values: dict[str, object] = {
        "resize": 72,
        "crop": 64,
        "interpolation": "bilinear",
        "antialias": True,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    values.update(overrides)
    return PreprocessingSpec.model_validate(values)


def draft_manifest(version: str = "v1", architecture: str = "mobilenet_v3_small") -> Manifest:
    """A manifest whose digests and parity outputs `write_bundle` fills in."""
    return hand_made_manifest(
        "parcel-damage",
        version,
        model=ModelSpec.model_validate({"architecture": architecture}),
        preprocessing=preprocessing_spec(),
        origin="test",
    )


def references(n: int = 4) -> list[ReferenceInput]:
    return [ReferenceInput(f"ref-{i}.jpg", image_bytes(100 + i), label=None) for i in range(n)]


def model_state(architecture: str = "mobilenet_v3_small", seed: int = 0) -> dict[str, torch.Tensor]:
    """Untrained weights whose outputs still spread over (0, 1).

    A freshly initialised network answers ~0.5 (or saturates) for everything, which would
    hide bugs; calibrating batch-norm statistics on a few images and scaling the head so
    their logits have a standard deviation of 1 fixes that.
    """
    torch.manual_seed(seed)
    model = build_model(ModelSpec.model_validate({"architecture": architecture}))
    pre = Preprocessor(preprocessing_spec())
    x = torch.stack([pre(image_bytes(1000 + seed * 64 + i)) for i in range(32)])
    recalibrate_batchnorm(model, [x], torch.device("cpu"), max_images=len(x))
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        logits = model(x)[:, 0]
        scale = 1.0 / max(float(logits.std()), 1e-6)
        head.weight.mul_(scale)
        head.bias.sub_(float(logits.mean()) * scale)  # centred: some references on each side of 0.5
    return model.state_dict()


def make_bundle(
    out: Path, private_key: Path, version: str = "v1", seed: int = 0, architecture: str = "mobilenet_v3_small"
) -> Bundle:
    return write_bundle(
        out, draft_manifest(version, architecture), model_state(architecture, seed), references(), private_key
    )


def upstream_verify(bundle_dir: Path, public_key: Path) -> subprocess.CompletedProcess[str]:
    """The OpenSSF `model_signing verify key` command, run as a user would."""
    cmd = [str(Path(sys.executable).with_name("model_signing")), "verify", "key", str(bundle_dir),
           "--signature", str(bundle_dir / "model.sig"), "--public_key", str(public_key)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def parcel_photo(seed: int, size: tuple[int, int] = (160, 120), brightness: float = 1.0) -> bytes:
    """A synthetic parcel photo (the demo's generator) as JPEG; `brightness` < 1 darkens it."""
    from training.synth import render

    img = render(seed, damaged=seed % 3 == 0, size=size)
    if brightness != 1.0:
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) * brightness, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_monitored_bundle(
    out: Path,
    private_key: Path,
    version: str,
    reference: list[bytes],
    retake: bool = False,
    decision: dict[str, object] | None = None,
) -> Bundle:
    """A bundle whose monitoring reference comes from `reference` images through the one path
    (header check, decode, crop features, served scores), as export builds it from validation.
    `retake`: with the validated ranges of those images too (`model_store.domain`), and parcel
    photos as its parity references (as export picks them: images the bundle judges).
    `decision`: fields of the decision section to set (e.g. `expected_cost`)."""
    from model_store import domain
    from model_store import monitoring as mon
    from model_store.bundle import load_bundle
    from model_store.predictor import Predictor
    from model_store.signing import public_key_file

    state = model_state()
    manifest = draft_manifest(version)
    if decision:
        manifest = manifest.model_copy(update={"decision": manifest.decision.model_copy(update=decision)})
    draft = write_bundle(out.with_name(out.name + "-draft"), manifest, state, references(), private_key)
    pub = public_key_file(private_key, out.with_name(out.name + "-pub.pem"))
    predictor = Predictor(load_bundle(draft.path, pub))
    rows, measured = [], []
    for data in reference:
        info = predictor.preprocessor.inspect(data)
        _, stats = predictor.preprocessor.prepare(data, mon.STATS_STRIDE)
        rows.append(mon.features(stats, info.width, info.height, predictor.predict([data])[0].probability))
        measured.append(domain.measures(stats, info.width, info.height))
    labels = [i % 2 for i in range(len(reference))]  # the drift features do not depend on them
    spec = mon.reference(rows, labels, draft.manifest.decision)
    refs = references()
    if retake:
        spec = spec.model_copy(update={"domain": domain.fit(measured)})
        refs = [ReferenceInput(f"ref-{i}.jpg", parcel_photo(500 + i), label=None) for i in range(4)]
    manifest = draft.manifest.model_copy(update={"monitoring": spec})
    return write_bundle(out, manifest, state, refs, private_key)
