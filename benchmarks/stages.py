"""`python -m benchmarks.stages`: where one image's time goes, per bundle variant.

One process, one torch thread (as each inference process serves), the benchmark's
camera-like 1280x720 JPEGs. Per image, the median over rounds of:

- decode + preprocess (bytes → normalised tensor), with the JPEG decoded at full size or
  at reduced size in the DCT domain (`preprocessing.jpeg_dct_scaling`);
- the forward pass at batch 1 and at the service's `max_batch`, for each runtime the
  manifest can record (`runtime.graph` eager or fused conv+BN, `runtime.memory_format`).

It is what chose the defaults new training configs record; the table goes to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from benchmarks import service
from benchmarks.images import camera_jpegs
from model_store.bundle import load_bundle
from model_store.manifest import RuntimeSpec
from model_store.predictor import SERVING_THREADS, Predictor
from model_store.preprocessing import Preprocessor


def _ms_per_item(fn: Callable[[], object], items: int, rounds: int) -> float:
    fn()  # warm: first calls allocate and pick kernels
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) / items)
    return statistics.median(times) * 1000


def _preprocess_all(pre: Preprocessor, images: list[bytes]) -> list[torch.Tensor]:
    return [pre(b) for b in images]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--max-batch", type=int, default=16)
    args = p.parse_args(argv)
    torch.set_num_threads(SERVING_THREADS)
    images = camera_jpegs(args.max_batch)
    rows: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        for decode in ("dct", "full"):
            root = Path(tmp) / f"decode-{decode}"
            bundle, _, public = service.make_bundle(
                root, images, jpeg_dct_scaling=decode == "dct", runtime=RuntimeSpec()
            )
            pre = Predictor(load_bundle(bundle, public)).preprocessor
            ms = _ms_per_item(partial(_preprocess_all, pre, images), len(images), args.rounds)
            rows.append(("decode + preprocess", f"JPEG decode {decode}", ms))
            sys.stderr.write(f"decode {decode}: {ms:.2f} ms/image" + "\n")
        for graph in ("eager", "fused"):
            for memory_format in ("contiguous", "channels_last"):
                root = Path(tmp) / f"{graph}-{memory_format}"
                runtime = RuntimeSpec(graph=graph, memory_format=memory_format)
                bundle, _, public = service.make_bundle(root, images, jpeg_dct_scaling=True, runtime=runtime)
                predictor = Predictor(load_bundle(bundle, public))
                batch = torch.stack([predictor.preprocessor(b) for b in images])
                for n in (1, args.max_batch):
                    x = batch[:n]
                    ms = _ms_per_item(partial(predictor.probabilities, x), n, args.rounds)
                    rows.append((f"forward, batch {n}", f"{graph} / {memory_format}", ms))
                    sys.stderr.write(f"{graph}/{memory_format} batch {n}: {ms:.2f} ms/image" + "\n")
    sys.stdout.write("| stage | variant | ms per image |\n|---|---|---|\n")
    for stage, variant, ms in rows:
        sys.stdout.write(f"| {stage} | {variant} | {ms:.2f} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
