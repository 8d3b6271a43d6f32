"""Progress output: one place decides between a live bar and plain lines.

A terminal gets a tqdm bar per epoch; a file or pipe (CI, `make demo | tee`) gets no bar,
only the one summary line per epoch, so logs never fill with carriage returns.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

Log = Callable[[str], None]
T = TypeVar("T")


def log_stderr(message: str) -> None:
    """Progress lines on stderr, printed around any active progress bar."""
    tqdm.write(message, file=sys.stderr)


def progress(items: Iterable[T], *, desc: str, enabled: bool = True) -> Iterator[T]:
    """Iterate with a live bar when stderr is a terminal; silently otherwise."""
    if not (enabled and sys.stderr.isatty()):
        yield from items
        return
    yield from tqdm(items, desc=desc, unit="batch", leave=False, file=sys.stderr, mininterval=0.5)
