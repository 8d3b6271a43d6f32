"""HAProxy, compose's proxy, run on 127.0.0.1 from the shipped configuration files."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests.utils.programs import missing
from tests.utils.waiting import eventually


def require_haproxy() -> str:
    """The haproxy program. Skip without it on a developer's machine; fail under CI or
    `make test`, which install it (`make haproxy`)."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    missing("haproxy is missing: `make haproxy` installs it (apt-get install -y haproxy, as root)", "REQUIRE_HAPROXY")


def localise(text: str, replacements: Mapping[str, str]) -> str:
    """A shipped configuration with only addresses and paths replaced: each one must still be
    in the file, so the test never runs a configuration the file no longer resembles."""
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in the configuration: update the test's replacements"
        text = text.replace(old, new)
    return text


def check(*configs: Path) -> subprocess.CompletedProcess[str]:
    """`haproxy -c`: HAProxy's own parse of the files, loaded in order as the proxy loads them."""
    args = [a for c in configs for a in ("-f", str(c))]
    return subprocess.run([require_haproxy(), "-c", *args], capture_output=True, text=True, timeout=30, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Haproxy:
    """`haproxy -db -f ...` in the foreground, until the `with` block ends."""

    def __init__(self, configs: list[Path], ports: list[int], log: Path) -> None:
        self.configs, self.ports, self.log = configs, ports, log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Haproxy:
        args = [a for c in self.configs for a in ("-f", str(c))]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([require_haproxy(), "-db", *args], stdout=out, stderr=out)

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            return all(_accepts(p) for p in self.ports)

        eventually(listening, timeout=10, what="haproxy to listen")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
