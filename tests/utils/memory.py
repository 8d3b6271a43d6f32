"""Memory of a whole service: the resident set of a process and all its descendants
(the front, the forkserver and the inference workers), sampled in a background thread."""

from __future__ import annotations

import threading
import time

import psutil

MIB = 1024 * 1024


def tree_rss(pid: int) -> int:
    """Bytes resident in `pid` and every descendant now (processes that exit meanwhile are skipped)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


class PeakRss:
    """`with PeakRss(pid) as peak: ...`; then `peak.max` is the highest total seen (bytes).

    Sampling every `every` seconds can miss a spike shorter than that; 20 ms is shorter than
    decoding any image that could matter for memory.
    """

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid = pid
        self.every = every
        self.max = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.max = max(self.max, tree_rss(self.pid))
            self.samples += 1
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRss:
        self.max = tree_rss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.max = max(self.max, tree_rss(self.pid))


def settled_rss(pid: int, *, samples: int = 5, every: float = 0.1) -> int:
    """The tree's RSS once idle: the lowest of a few samples (a sample can catch a spike)."""
    lowest = tree_rss(pid)
    for _ in range(samples - 1):
        time.sleep(every)
        lowest = min(lowest, tree_rss(pid))
    return lowest
