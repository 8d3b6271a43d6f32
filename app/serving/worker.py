"""An inference worker process: decode, preprocess and forward a batch (or explain one image), on one core.

The front process (HTTP, admission, batching, swaps, metrics) sends it frames over a
socketpair (`app.serving.protocol`); it answers each one before reading the next. It holds one
`Predictor` per loaded version, built from bundle bytes the front has already verified,
so a swap verifies and hashes a bundle once. One torch thread: the service runs one
worker per core instead of OpenMP threads that would spin beside the decoders.

It imports no web framework, so the forkserver that spawns workers preloads only torch
and the model code, and a new worker is ready in milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import torch

from app.serving.protocol import Header, recv_frame, send_frame
from model_store import monitoring as mon
from model_store.bundle import Bundle
from model_store.errors import ImageError, ModelStoreError
from model_store.explain import METHODS, explain, overlay_png
from model_store.manifest import parse_manifest
from model_store.predictor import Predictor
from model_store.preprocessing import DecodeLimits


def serve(sock: socket.socket, threads: int, device: str, limits: DecodeLimits, max_batch: int) -> None:
    """The worker's main loop; returns when the front says stop or goes away."""
    # Ctrl-C reaches the whole process group; the front decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)  # SERVING_THREADS by default: see model_store.predictor
    models: dict[str, Predictor] = {}
    while True:
        try:
            header, blobs = recv_frame(sock)
        except (EOFError, ConnectionError):
            return  # the front exited (or was killed): nothing left to serve
        op = header.get("op")
        out: list[bytes] = []  # bytes that go back with the reply (an explanation's overlay)
        try:
            if op == "predict":
                reply = _predict(
                    models[header["version"]], blobs, header.get("stats", True), header.get("digests", False)
                )
            elif op == "explain":
                reply, out = _explain(models[header["version"]], blobs[0], header["method"])
            elif op == "load":
                started = time.perf_counter()
                models[header["version"]] = _load(header, blobs, device, limits, max_batch)
                reply = {"ok": True, "seconds": time.perf_counter() - started}
            elif op == "ping":  # the front checks that an idle worker still answers
                reply = {"ok": True}
            elif op == "unload":
                models.pop(header["version"], None)
                reply = {"ok": True}
            elif op == "stop":
                send_frame(sock, {"ok": True})
                return
            else:
                reply = {"ok": False, "code": "bad_op", "message": f"unknown op {op!r}"}
        except ModelStoreError as exc:
            reply = {"ok": False, "code": exc.code, "message": str(exc)}
        except Exception as exc:  # a model or device error fails this frame, not the worker
            reply = {"ok": False, "code": "worker_error", "message": f"{type(exc).__name__}: {exc}"}
        send_frame(sock, {**reply, "pid": os.getpid()}, out if reply.get("ok") else [])


def _load(header: Header, blobs: list[bytes], device: str, limits: DecodeLimits, max_batch: int) -> Predictor:
    manifest_bytes, weights, *refs = blobs
    manifest = parse_manifest(manifest_bytes)
    # The front verified exactly these bytes (signature, file set, digests) before sending
    # them over a private socketpair; hashing them again here would be the second time.
    bundle = Bundle(
        path=Path(header["path"]),
        manifest=manifest,
        manifest_sha256=header["manifest_sha256"],
        references={r.file: data for r, data in zip(manifest.parity.references, refs, strict=True)},
        manifest_bytes=manifest_bytes,
        weights=weights,
    )
    predictor = Predictor(bundle, device=device, limits=limits)  # parses the weights, here only
    predictor.warm_up(max_batch)
    return predictor


def _predict(
    predictor: Predictor, images: list[bytes], with_stats: bool = True, with_digests: bool = False
) -> dict[str, Any]:
    """Probabilities (and drift features, and each image's sha256 for its receipt) in order;
    an image that fails to decode gets an error, not the batch."""
    # Hashed here, beside the decode, rather than on the front's event loop (~0.5 ms per MB),
    # and outside the decode time the metrics report.
    digests = [hashlib.sha256(data).hexdigest() for data in images] if with_digests else None
    started = time.perf_counter()
    tensors, rows, errors = [], [], []
    stats: list[list[float] | None] = [None] * len(images)
    reference = predictor.manifest.monitoring
    stride = reference.stats_stride if reference is not None else mon.STATS_STRIDE
    for i, data in enumerate(images):
        try:
            if with_stats:
                tensor, image_stats = predictor.preprocessor.prepare(data, stride)
                stats[i] = image_stats.as_list()
            else:
                tensor = predictor.preprocessor(data)
        except ImageError as exc:
            errors.append([i, exc.code, str(exc)])
            continue
        tensors.append(tensor)
        rows.append(i)
    decoded = time.perf_counter()
    probs: list[float | None] = [None] * len(images)
    if tensors:
        for i, p in zip(rows, predictor.probabilities(torch.stack(tensors)), strict=True):
            probs[i] = p
    return {
        "ok": True,
        "probs": probs,
        "stats": stats,
        "errors": errors,
        "digests": digests,
        "decode_s": decoded - started,
        "forward_s": time.perf_counter() - decoded,
        "batch": len(tensors),
    }


def _explain(predictor: Predictor, data: bytes, method: str) -> tuple[dict[str, Any], list[bytes]]:
    """One image's served probability (the same call as `_predict`: equal to predict's bit for
    bit), its heatmap as a grid over the image as sent, and the overlay PNG (the one blob)."""
    if method not in METHODS:
        return {"ok": False, "code": "bad_op", "message": f"unknown explanation method {method!r}"}, []
    started = time.perf_counter()
    e = explain(predictor, data, method)  # one of METHODS: checked just above
    png = overlay_png(predictor.preprocessor, data, e)
    # The features of the retake check, so the decision is predict's (retake included).
    reference = predictor.manifest.monitoring
    _, stats = predictor.preprocessor.prepare(data, reference.stats_stride if reference is not None else 1)
    reply = {
        "ok": True,
        "probability": e.probability,
        "method": e.method,
        "width": e.width,
        "height": e.height,
        "seen": list(e.seen),
        "grid": e.grid(),
        "stats": stats.as_list(),
        "seconds": time.perf_counter() - started,
    }
    return reply, [png]
