"""A real S3-compatible server (moto) on 127.0.0.1, in a thread, on an ephemeral port."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass  # one line per request would bury the test output; errors are still logged


class MotoServer:
    """moto's S3 over HTTP, as a client in another process sees it.

    moto checks a conditional PUT (If-Match, If-None-Match) and then writes, with no lock
    in between, while its HTTP server runs each request in its own thread; AWS S3 makes
    the check and the write one atomic step. Requests are applied one at a time here so
    the server gives the guarantee the store relies on (connections stay concurrent).
    """

    def __init__(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)
        lock = threading.Lock()

        def serialised(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            with lock:
                return list(app(environ, start_response))

        self._server: BaseWSGIServer = make_server("127.0.0.1", 0, serialised, True, request_handler=_QuietHandler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="moto-server")

    def __enter__(self) -> MotoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join(timeout=30)
        self._server.server_close()


def client_env(url: str) -> dict[str, str]:
    """The AWS variables a store (here or in a child process) needs to reach `url`, and only it."""
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        # No instance-metadata lookups and no personal config: loopback only.
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
