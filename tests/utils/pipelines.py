"""A real serving pipeline (with its worker processes) for in-process tests, no HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from app.serving.pipeline import Pipeline
from model_store.bundle import load_bundle
from model_store.preprocessing import ImageInfo, inspect


@contextlib.asynccontextmanager
async def running_pipeline(**options: Any) -> AsyncIterator[Pipeline]:
    options.setdefault("workers", 2)
    pipeline = Pipeline(**options)
    await pipeline.start()
    try:
        yield pipeline
    finally:
        await pipeline.close()


async def load(pipeline: Pipeline, bundle_dir: Path, public_key: Path) -> str:
    bundle = load_bundle(bundle_dir, public_key)
    await pipeline.load(bundle)
    return bundle.version


def checked(images: list[bytes]) -> list[tuple[str, bytes, ImageInfo]]:
    return [(f"img{i}", data, inspect(data)) for i, data in enumerate(images)]


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """A worker process stopped (SIGSTOP) for the block: it holds what it was given, as if a
    long batch were in progress, and answers nothing; continued after (unless it was killed)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):  # the watchdog replaced it, as it should
            os.kill(pid, signal.SIGCONT)
