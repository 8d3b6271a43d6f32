"""The one policy for a program the tests drive that the Makefile installs (Chromium,
HAProxy, promtool): on a developer's machine a missing one skips its tests; under CI or
`make test` (which sets the `REQUIRE_*` variable) it fails them, so a skip is never
reported as a pass."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(message: str, require_env: str) -> NoReturn:
    if os.environ.get("CI") or os.environ.get(require_env):
        pytest.fail(message)
    pytest.skip(message)
