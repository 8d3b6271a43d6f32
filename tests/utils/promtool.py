"""promtool, Prometheus's own checker of rule and configuration files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.utils.programs import missing


def require_promtool() -> str:
    """The promtool program. Skip without it on a developer's machine; fail under CI or
    `make test`, which install it (`make promtool`)."""
    found = shutil.which("promtool")
    if found:
        return found
    missing(
        "promtool is missing: `make promtool` installs it (apt-get install -y prometheus, as root)", "REQUIRE_PROMTOOL"
    )


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_promtool(), *map(str, args)], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )
