"""Smoke check of an installed service: sign, verify, activate, serve, predict.

Shipped in the image (`python /opt/app/smoke_check.py`) and runnable from a checkout.
With a throwaway key pair it writes a tiny signed bundle (untrained weights; the point is
the plumbing, not the model), verifies it, imports it into a temporary filesystem store
and activates it (parity first), then starts `python -m app` on 127.0.0.1 exactly as the
image's CMD does, waits for `/readyz`, and checks `/healthz`, `/v1/parity`, one
`/v1/predict` (whose probability must match the bundle's recorded parity output) and
`/metrics`. One line per step; exit 0 when every step passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from model_store import activation
from model_store.bundle import REFERENCE_DIR, Bundle, load_bundle
from model_store.errors import ModelStoreError
from model_store.manifest import (
    Manifest,
    ModelSpec,
    PreprocessingSpec,
)
from model_store.signing import generate_keypair
from model_store.store import open_store
from model_store.writer import ReferenceInput, hand_made_manifest, write_bundle
from model_store.zoo import build_model

VERSION = "smoke-1"
ZERO_SHA = "0" * 64


class SmokeFailed(Exception):
    """A step did not do what the service promises."""


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(80, 96, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _manifest() -> Manifest:
    """A draft manifest; `write_bundle` fills in the digests and parity outputs."""
    spec = PreprocessingSpec(resize=72, crop=64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    model = ModelSpec(architecture="mobilenet_v3_small")
    return hand_made_manifest("smoke-check", VERSION, model=model, preprocessing=spec, origin="smoke-check")


def make_signed_bundle(out: Path, private_key: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(architecture="mobilenet_v3_small"))
    # A fresh head answers 0.5 for everything, right on the threshold; shift it off it.
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.bias.fill_(1.5)
    references = [ReferenceInput(f"ref-{i}.jpg", _jpeg(i)) for i in range(3)]
    write_bundle(out, _manifest(), model.state_dict(), references, private_key)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _request(url: str, data: bytes | None = None, content_type: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": content_type} if content_type else {}
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextlib.contextmanager
def served(store: Path, public_key: Path, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m app` on a free loopback port, stopped on exit."""
    port = _free_port()
    env = {
        **os.environ,
        "APP_STORE": str(store),
        "APP_PUBLIC_KEY": str(public_key),
        "APP_HOST": "127.0.0.1",  # the image says 0.0.0.0; the check stays on loopback
        "APP_PORT": str(port),
    }
    env.pop("APP_ADMIN_TOKEN", None)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SmokeFailed(f"the service exited with code {proc.returncode} before it was ready")
        with contextlib.suppress(OSError):
            status, body = _request(f"{url}/readyz")
            if status == 200:
                ready: dict[str, Any] = json.loads(body)
                return ready
            last = f"{status} {body.decode(errors='replace')}"
        time.sleep(0.25)
    raise SmokeFailed(f"not ready after {timeout_s:.0f}s; last /readyz: {last}")


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailed(message)


def check(workdir: Path, timeout_s: float) -> None:
    def step(name: str, detail: str) -> None:
        print(f"ok  {name:<9} {detail}", flush=True)

    step(
        "runtime",
        f"python {platform.python_version()}, torch {torch.__version__}, cuda available {torch.cuda.is_available()}, "
        f"{os.cpu_count()} cpus, uid {os.getuid()}",
    )
    private_key, public_key = generate_keypair(workdir / "keys")
    make_signed_bundle(workdir / "bundle", private_key)
    bundle: Bundle = load_bundle(workdir / "bundle", public_key)
    digest = bundle.manifest_sha256[:12]
    step("verify", f"{bundle.manifest.name} {bundle.version} signed and verified (manifest sha256 {digest})")

    store = open_store(workdir / "store", public_key)
    store.import_bundle(workdir / "bundle", actor="smoke-check", reason="smoke check")
    entry = activation.activate(store, VERSION, actor="smoke-check", reason="smoke check")
    step("activate", f"{entry.to_version} active in {workdir / 'store'} after load + parity")

    log = workdir / "service.log"
    try:
        with served(workdir / "store", public_key, log) as (url, proc):
            start = time.monotonic()
            ready = _wait_ready(url, proc, timeout_s)
            _expect(ready.get("version") == VERSION, f"/readyz serves {ready.get('version')}, not {VERSION}")
            step("ready", f"/readyz 200 after {time.monotonic() - start:.1f}s: version {ready['version']}")

            status, _ = _request(f"{url}/healthz")
            _expect(status == 200, f"/healthz answered {status}")
            step("healthz", "200")

            status, body = _request(f"{url}/v1/parity")
            parity = json.loads(body)
            _expect(status == 200 and parity.get("passed") is True, f"/v1/parity answered {status}: {parity}")
            step("parity", f"{len(parity['images'])} reference images, max abs diff {parity['max_abs_diff']}")

            reference = bundle.manifest.parity.references[0]
            image = (bundle.path / REFERENCE_DIR / reference.file).read_bytes()
            status, body = _request(f"{url}/v1/predict", image, "image/jpeg")
            _expect(status == 200, f"/v1/predict answered {status}: {body.decode(errors='replace')}")
            result = json.loads(body)["results"][0]
            diff = abs(result["probability"] - reference.expected_probability)
            _expect(
                diff <= bundle.manifest.parity.tolerance and result["decision"] == reference.expected_decision,
                f"/v1/predict gave {result}, the bundle expects {reference.expected_probability} "
                f"({reference.expected_decision})",
            )
            step("predict", f"probability {result['probability']:.6f}, decision {result['decision']} (as recorded)")

            status, body = _request(f"{url}/metrics")
            _expect(status == 200 and b"parity_passed 1.0" in body, f"/metrics: {status}, parity_passed is not 1")
            step("metrics", "parity_passed 1.0")
    except SmokeFailed:
        print(f"--- service log ({log}) ---\n{log.read_text(errors='replace')[-4000:]}", file=sys.stderr)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for /readyz")
    args = p.parse_args(argv)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smoke-check-") as tmp:
        try:
            check(Path(tmp), args.timeout)
        except (SmokeFailed, ModelStoreError, OSError) as exc:
            print(f"FAIL smoke check: {exc}", file=sys.stderr)
            return 1
    print(f"smoke check passed in {time.monotonic() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
