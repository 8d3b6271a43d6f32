"""A throwaway store with a benchmark bundle, and the real service serving it.

The bundle is mobilenet_v3_small at resize 256 / crop 224 (camera photos, as stations
send them) with untrained weights: speed does not depend on what the weights learned.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from model_store import activation
from model_store.manifest import ModelSpec, PreprocessingSpec, RuntimeSpec
from model_store.preprocessing import Preprocessor
from model_store.signing import generate_keypair
from model_store.store import FilesystemStore
from model_store.writer import ReferenceInput, hand_made_manifest, write_bundle
from model_store.zoo import build_model
from training.loops import recalibrate_batchnorm


def make_bundle(
    root: Path, images: list[bytes], *, jpeg_dct_scaling: bool, runtime: RuntimeSpec
) -> tuple[Path, Path, Path]:
    """(bundle dir, private key, public key) of a signed benchmark bundle under `root`."""
    private, public = generate_keypair(root / "keys")
    spec = PreprocessingSpec(
        resize=256,
        crop=224,
        jpeg_dct_scaling=jpeg_dct_scaling,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    model_spec = ModelSpec(architecture="mobilenet_v3_small")
    torch.manual_seed(0)
    model = build_model(model_spec)
    pre = Preprocessor(spec)
    recalibrate_batchnorm(model, [torch.stack([pre(b) for b in images[:16]])], torch.device("cpu"), 16)
    manifest = hand_made_manifest(
        "benchmark", "bench-1", model=model_spec, preprocessing=spec, runtime=runtime, origin="benchmark"
    )
    refs = [ReferenceInput(f"{i:02d}.jpg", images[i]) for i in range(8)]
    bundle = write_bundle(root / "bundle", manifest, model.state_dict(), refs, private)
    return bundle.path, private, public


def make_store(root: Path, bundle_dir: Path, public_key: Path) -> Path:
    store = FilesystemStore(root / "store", public_key)
    store.import_bundle(bundle_dir, actor="benchmark")
    activation.activate(store, "bench-1", actor="benchmark")
    return store.root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_service(store: Path, public_key: Path, log: Path, **settings: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
    env.update({"APP_STORE": str(store), "APP_PUBLIC_KEY": str(public_key), "APP_PORT": str(port)})
    env.update({f"APP_{k.upper()}": v for k, v in settings.items()})
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app"], env=env, stderr=out, stdout=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the service did not become ready in 120 s; see {log}")


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and all its descendants (front, forkserver, workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid = int(fields[1])
        children.setdefault(ppid, []).append(int(entry.name))
        stats[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total
