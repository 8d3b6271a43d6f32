"""Fault injection for the crash tests: SIGKILL this process at a named step.

Code that writes something a crash must not break (the store, uploads, checkpoints,
bundles) calls `crash_point("step")` between its steps. It does nothing unless the
environment variable `DAMAGE_DETECT_CRASH_AT` names that step, as `step` or `step@N` (the
Nth time this process reaches it); then it kills the process with SIGKILL, the way a power
cut or the OOM killer would, so each crash is tested on purpose instead of by timing luck.
Tests set it for a child process (a service, a training run, an export), never for themselves.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "DAMAGE_DETECT_CRASH_AT"
_reached: Counter[str] = Counter()


def crash_point(step: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition("@")
    if name != step:
        return
    _reached[step] += 1
    if _reached[step] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
