"""The ceiling: the same pipeline (Preprocessor + Predictor, one torch thread) with no HTTP.

- throughput: one process per core, each decoding and forwarding batches of the service's
  `max_batch` as fast as it can, all at once: what the hardware allows for this bundle;
- latency: one image at a time in one process: what concurrency 1 could at best answer.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from model_store.bundle import load_bundle
from model_store.predictor import SERVING_THREADS, Predictor


def _predictor(bundle_dir: Path, public_key: Path, warm: int) -> Predictor:
    torch.set_num_threads(SERVING_THREADS)
    predictor = Predictor(load_bundle(bundle_dir, public_key))
    predictor.warm_up(warm)
    return predictor


def _throughput(
    bundle_dir: Path, public_key: Path, images: list[bytes], batch: int, seconds: float, start: Any, out: Any
) -> None:
    predictor = _predictor(bundle_dir, public_key, batch)
    start.wait()
    done, i, t0 = 0, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        chunk = [images[(i + k) % len(images)] for k in range(batch)]
        i += batch
        predictor.probabilities(torch.stack([predictor.preprocessor(b) for b in chunk]))
        done += batch
    out.put(done / elapsed)


def throughput_limit(
    bundle_dir: Path, public_key: Path, images: list[bytes], processes: int, batch: int, seconds: float = 8.0
) -> float:
    """Images per second with `processes` single-threaded pipelines running side by side."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(target=_throughput, args=(bundle_dir, public_key, images, batch, seconds, start, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    rates = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    return float(sum(rates))


def _latency(bundle_dir: Path, public_key: Path, images: list[bytes], count: int, out: Any) -> None:
    predictor = _predictor(bundle_dir, public_key, 1)
    times = []
    for i in range(count):
        t0 = time.perf_counter()
        predictor.predict([images[i % len(images)]])
        times.append(time.perf_counter() - t0)
    out.put(times)


def single_image_latency_ms(bundle_dir: Path, public_key: Path, images: list[bytes], count: int = 200) -> float:
    """p50 of decode + preprocess + forward for one image, alone, in a fresh process."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_latency, args=(bundle_dir, public_key, images, count, out))
    p.start()
    times: list[float] = out.get(timeout=300)
    p.join()
    return statistics.median(times) * 1000
