"""A real S3-compatible server (moto) on 127.0.0.1, in a thread, on an ephemeral port; and a
proxy in front of it that can make it hang."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
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


class StallingProxy:
    """A TCP proxy on 127.0.0.1 in front of an S3 server that can be made to hang.

    While stalled it still accepts connections and reads what clients send, but forwards
    nothing and answers nothing, on new and open connections alike: a hung S3 (or a
    network path that black-holes packets), as opposed to a refused connection, which
    clients notice at once.
    """

    def __init__(self, target_url: str) -> None:
        host, _, port = target_url.removeprefix("http://").partition(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stalled = threading.Event()
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True, name="stalling-proxy")

    def stall(self) -> None:
        self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def __enter__(self) -> StallingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._listener.close()
        for s in list(self._sockets):
            with contextlib.suppress(OSError):
                s.close()
        self._thread.join(timeout=10)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._target, timeout=10)
            except OSError:
                return  # closed
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True, name="stalling-proxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self._stalled.is_set() and not self._closing.is_set():
                    time.sleep(0.05)  # hold it: nothing goes through while stalled
                if self._closing.is_set():
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
