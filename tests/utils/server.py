"""A real uvicorn server on 127.0.0.1, in a thread, on an ephemeral port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvicorn

from app.edge.server import config
from app.main import create_app
from app.settings import Settings
from tests.utils.waiting import eventually

ADMIN_TOKEN = "test-admin-token-0123456789"


class LiveServer:
    def __init__(self, store: Path, public_key: Path, **overrides: Any) -> None:
        # Following and window summaries off unless a test asks: a store that changes only
        # when the test changes it (tests compare store snapshots around refused requests).
        values: dict[str, Any] = {
            "store": str(store), "public_key": public_key, "follow_interval_s": 0.0, "summary_interval_s": 0.0,
        }  # fmt: skip
        values.update(overrides)
        self.settings = Settings(**values)
        self.app = create_app(self.settings)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(config(self.app, self.settings))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            r = httpx.get(f"{self.url}/readyz")
            return r.json() if r.status_code == 200 else None

        return eventually(ready, timeout=timeout, what="/readyz to answer 200")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()


def admin(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class ServiceProcess:
    """`python -m app` as ops run it: a separate process on a free port of 127.0.0.1."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
        self.env = {**base, "APP_PORT": str(self.port), **env}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServiceProcess:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "app"], env=self.env, stdout=out, stderr=out)
        return self

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=5)
                if r.status_code == 200:
                    body: dict[str, Any] = r.json()
                    return body
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"service not ready after {timeout:.0f}s: {self.log.read_text()[-2000:]}")

    def descendants(self) -> list[psutil.Process]:
        """The forkserver and inference workers this service started (to check they end with it)."""
        assert self.proc is not None
        return psutil.Process(self.proc.pid).children(recursive=True)

    def wait_killed(self, children: list[psutil.Process], timeout: float = 60.0) -> int:
        """Wait for the front (killed by a fault) to exit, then for its `children`, which
        notice it is gone; any still running after `timeout` are ended. Its return code."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        _, alive = psutil.wait_procs(children, timeout=timeout)
        for p in alive:  # started by this test: not left running whatever the outcome
            p.kill()
        assert not alive, f"{len(alive)} process(es) outlived the killed service"
        return code

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
