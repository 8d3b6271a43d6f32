"""Feedback capture in the service: keep a sample of requests for inspectors to label.

Off by default (`APP_CAPTURE_FRACTION=0`). A sampled request is written after its response
is sent, in a thread, at most `MAX_IN_FLIGHT` at a time; a write that fails or would queue
is counted and dropped. A prediction never waits for, or fails because of, capture.

The size bound holds at every write, not at the next scan: each write's bytes are counted
against a running total before it starts (the store is scanned once to begin with), and a
write that would pass the bound first has the oldest requests removed, down to a tenth of
the bound below it, so that a full store is scanned once per tenth rather than per write.
The age bound is enforced by the same scan, at least every `ENFORCE_EVERY_S`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.ops.model_host import Loaded
from app.serving.pipeline import Scored
from model_store.capture import CapturedImage, CaptureStore, new_record, request_bytes
from model_store.estimate import realised
from model_store.manifest import DecisionSpec
from model_store.preprocessing import ImageInfo

log = logging.getLogger("app.ops.capture")
MAX_IN_FLIGHT = 4
ENFORCE_EVERY_S = 60.0
FEEDBACK_CACHE_S = 30.0


@dataclass
class Capturer:
    store: CaptureStore
    fraction: float
    max_bytes: int
    max_age_s: float
    written: int = 0
    dropped: int = 0
    failed: int = 0
    in_flight: int = 0
    _last_enforced: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _bytes: int | None = None  # the store at its last scan plus writes since, each counted before it starts
    _writing: int = 0  # bytes of writes in progress (a scan does not count them: not complete yet)
    _feedback: tuple[float, dict[str, list[tuple[str, str, str]]]] | None = field(default=None, repr=False)

    def job(
        self,
        request_id: str,
        station: str,
        loaded: Loaded,
        images: Sequence[tuple[str, bytes, ImageInfo]],
        scores: Sequence[Scored],
    ) -> Callable[[], Awaitable[None]] | None:
        if self.fraction <= 0 or random.random() >= self.fraction:
            return None
        if self.in_flight >= MAX_IN_FLIGHT:
            self.dropped += 1
            return None
        self.in_flight += 1
        captured = [
            CapturedImage(data, info.format, s.probability, s.decision, s.image_sha256)
            for (_, data, info), s in zip(images, scores, strict=True)
        ]
        record = new_record(request_id, loaded.version, station, captured)

        async def write() -> None:
            try:
                if await asyncio.to_thread(self._write, request_id, record, captured):
                    self.written += 1
                else:
                    self.dropped += 1
            except Exception as exc:  # never the request's problem
                self.failed += 1
                log.error("capture of request %s failed: %s: %s", request_id, type(exc).__name__, exc)
            finally:
                self.in_flight -= 1

        return write

    def _write(self, request_id: str, record: dict[str, Any], images: list[CapturedImage]) -> bool:
        """Keep one request within the bounds; False if it cannot fit (dropped)."""
        size = request_bytes(record, images)
        if not self._reserve(size):
            return False
        try:
            self.store.put_request(request_id, record, images)
        except BaseException:
            with self._lock:
                self._writing -= size
                if self._bytes is not None:
                    self._bytes -= size
            raise
        with self._lock:
            self._writing -= size
        return True

    def _reserve(self, size: int) -> bool:
        """Count `size` bytes against the bound before they are written, removing the
        oldest requests first if they would pass it; False when they cannot fit."""
        if size > self.max_bytes:
            return False  # could never fit: removing everything else for it would not help
        with self._lock:  # one scan at a time; writes themselves run unlocked
            now = time.monotonic()
            full = self._bytes is not None and self._bytes + size > self.max_bytes
            if self._bytes is None or full or now - self._last_enforced > ENFORCE_EVERY_S:
                target = self.max_bytes - self.max_bytes // 10 - size if full else self.max_bytes
                removed, kept = self.store.enforce(max(0, target), self.max_age_s)
                self._last_enforced = now
                # Writes in progress are not in the scan; one that completed during it may be
                # counted twice until the next scan: an overestimate, which errs on the safe side.
                self._bytes = kept + self._writing
                if removed:
                    log.info("capture: removed %d request(s) past the size or age bound", removed)
            if self._bytes + size > self.max_bytes:
                return False
            self._bytes += size
            self._writing += size
            return True

    def feedback(self, version: str, decision: DecisionSpec) -> dict[str, Any]:
        """`version`'s figures on the images inspectors labelled, all together and per station
        (`model_store.estimate.realised`, the definitions the estimates use); the capture store
        is scanned at most every `FEEDBACK_CACHE_S`. Images answered retake got no verdict and
        are left out."""
        cached = self._feedback
        if cached is None or time.monotonic() - cached[0] > FEEDBACK_CACHE_S:
            labels = self.store.labels()
            per_version: dict[str, list[tuple[str, str, str]]] = {}  # (station, decision, label) per labelled image
            for record in self.store.records():
                label = labels.get(record["request_id"])
                if label is not None:
                    decisions = [img["decision"] for img in record["images"]]
                    per_version.setdefault(record["version"], []).extend(
                        (record["station"], d, t) for d, t in zip(decisions, label["labels"], strict=False)
                    )
            cached = (time.monotonic(), per_version)
            self._feedback = cached
        positive, negative = decision.positive_label, decision.negative_label
        judged = [
            (s, d == positive, t == positive) for s, d, t in cached[1].get(version, []) if d in (positive, negative)
        ]

        def figures(pairs: list[tuple[bool, bool]]) -> dict[str, Any]:
            return {"labelled_images": len(pairs), **realised(pairs, decision.cost_false_alarm, decision.cost_miss)}

        pairs = [(f, t) for _, f, t in judged]
        tp = sum(f and t for f, t in pairs)
        fp = sum(f and not t for f, t in pairs)
        fn = sum(t and not f for f, t in pairs)
        stations: dict[str, list[tuple[bool, bool]]] = {}
        for station, f, t in judged:
            stations.setdefault(station, []).append((f, t))
        counts = {
            "true_positive": tp,
            "false_positive": fp,
            "false_negative": fn,
            "true_negative": len(pairs) - tp - fp - fn,
        }
        return {
            **figures(pairs),
            "counts": counts,
            "stations": {station: figures(p) for station, p in sorted(stations.items())},
        }

    def invalidate(self) -> None:
        self._feedback = None
