"""A real uvicorn server on 127.0.0.1, in a thread, on an ephemeral port."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from app.main import create_app
from app.server import config
from app.settings import Settings

ADMIN_TOKEN = "test-admin-token-0123456789"


class LiveServer:
    def __init__(self, store: Path, public_key: Path, **overrides: Any) -> None:
        values: dict[str, Any] = {"store": str(store), "public_key": public_key, "follow_interval_s": 0.0}
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
        deadline = time.monotonic() + timeout
        while True:
            r = httpx.get(f"{self.url}/readyz")
            if r.status_code == 200:
                body: dict[str, Any] = r.json()
                return body
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready: {r.json()}")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()


def admin(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
