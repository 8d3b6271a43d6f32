"""`make demo` refuses a port that is taken before it installs, trains or serves.

make runs `scripts/demo.sh --check-port` before installing, and the script checks again
before its first step (and once more before it serves)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # a subprocess


def _demo(tmp_path: Path, port: str, *args: str) -> subprocess.CompletedProcess[str]:
    # DEMO_DIR in tmp_path: had the check let it through, nothing lands in the repository.
    env = {**os.environ, "DEMO_PORT": port, "DEMO_DIR": str(tmp_path / "demo"), "DEMO_COUNT": "4"}
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("args", [["--check-port"], []], ids=["check-port", "the-whole-demo"])
def test_a_port_already_listened_on_is_refused_before_anything_runs(tmp_path: Path, args: list[str]) -> None:
    with socket.socket() as other:  # another server on the demo's port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = _demo(tmp_path, str(port), *args)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert f"port {port} (DEMO_PORT)" in lines[0] and "already in use" in lines[0]
    assert result.stdout == "" and not (tmp_path / "demo").exists()  # no step started: no data, no training


def test_a_demo_port_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    result = _demo(tmp_path, "eighty")
    assert result.returncode == 2
    assert result.stderr == "error: DEMO_PORT=eighty is not a port number (1-65535)\n"
    assert not (tmp_path / "demo").exists()


def test_a_free_port_passes_the_check(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listened on: a connection is refused
        result = _demo(tmp_path, str(port), "--check-port")
    assert (result.returncode, result.stderr) == (0, "")


def test_make_demo_checks_the_port_before_it_installs() -> None:
    # Under `make test` the variables of the outer make would make this one a sub-make, which
    # prints "Entering directory" lines: run it as a user's own `make` would be.
    env = {k: v for k, v in os.environ.items() if k not in {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"}}
    dry = subprocess.run(
        ["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True, env=env
    )
    assert dry.stdout.splitlines()[0] == "bash scripts/demo.sh --check-port", dry.stdout
