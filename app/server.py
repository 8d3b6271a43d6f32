"""uvicorn, configured: uvloop, httptools, and timeouts for clients that hold a connection
without finishing a request (slow headers, idle sockets). Slow bodies are bounded where the
body is read (`app.intake`)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import Settings

HEADER_TIMEOUT_S = 10.0  # from connecting (or the previous answer) to the end of the request headers


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a deadline for the request line and headers.

    uvicorn only times out idle keep-alive connections after a response; a client that
    connects and then sends nothing, or its headers a byte at a time, would hold a
    connection (and a file descriptor) forever.
    """

    header_timeout_s = HEADER_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle time

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: its own limits apply
        body = json.dumps(
            {"error": "request_timeout", "message": f"request headers not received within {self.header_timeout_s:g} s"}
        ).encode()
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + f"content-length: {len(body) + 1}\r\n\r\n".encode()
            + body
            + b"\n"
        )
        self.transport.close()


def config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": GuardedHttpToolsProtocol,
        "timeout_keep_alive": 5,  # idle keep-alive connections
        "log_level": "warning",
        "access_log": False,  # our own JSON access line per request (app.observability)
        "lifespan": "on",
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
