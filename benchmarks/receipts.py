"""`python -m benchmarks.receipts`: what a decision receipt costs per image, against what
serving the image costs, in one process on this machine (~1 minute).

- **receipt**: the image's sha256 (in the worker, over the benchmark's camera-like
  1280x720 JPEGs, ~236 KB each) plus its payload and signature (in the front: `claims` +
  `ReceiptSigner.sign`, ES256), each timed with `timeit` (10,000 signatures);
- **the algorithms a receipt could use**, signed the same way (PyJWT): ES256 and EdDSA;
- **serving**: decode + preprocess + forward of the same images in batches of 16, one torch
  thread, the benchmark bundle (reduced-size JPEG decode, fused, channels-last): the
  in-process limit's work per image (docs/performance.md).

Every figure is this process's CPU time (not wall time, which other jobs on a shared
machine would inflate), the least disturbed of several rounds.

On a CPU-bound service every core is busy, so throughput falls by the receipt's share of
the CPU each image takes: receipt / (serving + receipt). The serving figure leaves out the
front's HTTP work per image, so the share printed is an upper bound. Table on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

import jwt
import torch
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from benchmarks import service
from benchmarks.images import camera_jpegs
from model_store.bundle import load_bundle
from model_store.manifest import RuntimeSpec
from model_store.predictor import SERVING_THREADS, Predictor
from model_store.receipts import ReceiptSigner, claims
from model_store.signing import generate_keypair


def _us(stmt: Callable[[], object], number: int) -> float:
    """CPU microseconds per call (this process's CPU time, so other jobs on a shared machine
    do not count): the best of 5 repeats, the least disturbed."""
    return min(timeit.repeat(stmt, number=number, repeat=5, timer=time.process_time)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.receipts", description=__doc__.splitlines()[0])
    p.add_argument("--signatures", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=10, help="serving rounds over the images (median)")
    args = p.parse_args(argv)
    torch.set_num_threads(SERVING_THREADS)
    images = camera_jpegs(64)
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-receipts-") as tmp:
        root = Path(tmp)
        private, _ = generate_keypair(root / "receipt-key")
        signer = ReceiptSigner(private)
        digest = hashlib.sha256(images[0]).hexdigest()

        def sign() -> str:
            payload = claims(
                iat=int(time.time()),
                request_id="3f9fc0aa0a104f348f7ae91c7fe85424",
                index=0,
                station="dock-1",
                image_sha256=digest,
                probability=0.9999998807907104,
                decision="damaged",
                threshold=0.07304916903376579,
                model=("parcel-damage", "demo-1", "391a957d890d00f5f05f00445aa22e96a2227a71e1a4b1327b4c1eadb3d22471"),
                runtime={"device": "cpu", "threads": 1, "batch": 16, "row": 3, "torch": torch.__version__},
            )
            return signer.sign(payload)

        sha_us = _us(lambda: [hashlib.sha256(b).hexdigest() for b in images], 20) / len(images)
        sign_us = _us(sign, args.signatures // 5)
        body = sign().split(".")[1].encode()
        keys: dict[str, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey] = {
            "ES256": ec.generate_private_key(ec.SECP256R1()),
            "EdDSA": ed25519.Ed25519PrivateKey.generate(),
        }
        for alg, key in keys.items():
            encode = partial(jwt.PyJWS().encode, body, key, algorithm=alg)
            rows.append((f"JWS {alg} of a receipt's payload (PyJWT)", _us(encode, args.signatures // 5)))
        sys.stderr.write(f"sha256 {sha_us:.1f} us/image, payload + ES256 signature {sign_us:.1f} us\n")

        bundle, _, public = service.make_bundle(
            root, images, jpeg_dct_scaling=True, runtime=RuntimeSpec(graph="fused", memory_format="channels_last")
        )
        predictor = Predictor(load_bundle(bundle, public))
        predictor.warm_up(16)
        times = []
        for _ in range(args.rounds):
            t0 = time.process_time()
            for i in range(0, len(images), 16):
                predictor.probabilities(torch.stack([predictor.preprocessor(b) for b in images[i : i + 16]]))
            times.append((time.process_time() - t0) / len(images))
        serve_us = min(times) * 1e6
        sys.stderr.write(f"serving {serve_us / 1000:.2f} ms/image\n")

    receipt_us = sha_us + sign_us
    sys.stdout.write("| per image | us |\n|---|---|\n")
    for label, us in [
        (f"sha256 of the image (mean {sum(map(len, images)) / len(images) / 1000:.0f} KB)", sha_us),
        ("payload + ES256 signature (`claims` + `ReceiptSigner.sign`)", sign_us),
        ("**a receipt**", receipt_us),
        *rows,
        ("serving: decode + preprocess + forward, batch 16, one thread", serve_us),
    ]:
        sys.stdout.write(f"| {label} | {us:.1f} |\n")
    share = receipt_us / (serve_us + receipt_us)
    sys.stdout.write(f"\nreceipts' share of the CPU per image: {share:.2%} (throughput cost, upper bound)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
