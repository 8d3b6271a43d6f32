"""uvicorn, configured: uvloop, httptools, timeouts for clients that hold a connection
without finishing a request (slow headers, idle sockets), and bounds on the request line
and headers. Slow or large bodies are bounded where the body is read (`app.edge.intake`)."""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import HEADER_TIMEOUT_S, Settings

MAX_URL_BYTES = 8 * 1024  # the request target; ours are short, a long one is a probe or a mistake
# The request line and headers together. httptools itself has no bound: it would buffer a
# header of any size until the header deadline.
MAX_HEAD_BYTES = 64 * 1024
# After a refusal, bytes the client is still sending are read and dropped for this long
# before closing: closing with unread bytes would reset the connection, and a reset can
# destroy the answer before the client reads it.
LINGER_S = 1.0


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; httptools re-raises it wrapped."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a deadline and size bounds for the request line and
    headers, and JSON instead of plain text for a request that is not HTTP.

    uvicorn only times out idle keep-alive connections after a response; a client that
    connects and then sends nothing, or its headers a byte at a time, would hold a
    connection (and a file descriptor) forever. A URL over `MAX_URL_BYTES` is answered 414,
    a head over `MAX_HEAD_BYTES` 431, anything the parser rejects 400; each closes the
    connection before the application sees a byte.
    """

    header_timeout_s = HEADER_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # between the start of a request and the end of its headers
        self._head_raw = 0  # bytes received for this head after its first chunk (httptools buffers them)
        self._head_parsed = 0  # bytes of the request target and headers parsed so far
        self._refusal: tuple[int, str, str] | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: drop what the client still sends
        super().data_received(data)  # a callback's _Refused arrives in send_400_response
        if self._in_head and not self._refused:
            # The headers are still not complete after this chunk: httptools buffers what it
            # has of them, with no limit of its own. (A chunk that completes them may carry
            # any amount of body; it is not counted.)
            self._head_raw += len(data)
            if self._head_raw > MAX_HEAD_BYTES:
                self._refuse(
                    431, "request_headers_too_large", f"request line and headers exceed {MAX_HEAD_BYTES} bytes"
                )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_raw, self._head_parsed = True, 0, 0
        if self._header_timer is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_parsed += len(url)
        if len(self.url) > MAX_URL_BYTES:
            self._refusal = (414, "uri_too_long", f"the request target exceeds {MAX_URL_BYTES} bytes")
            raise _Refused()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_parsed += len(name) + len(value)
        if self._head_parsed > MAX_HEAD_BYTES:
            self._refusal = (431, "request_headers_too_large", f"request headers exceed {MAX_HEAD_BYTES} bytes")
            raise _Refused()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_head = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to anything the parser rejects; ours is JSON and names the limit."""
        status, code, message = self._refusal or (400, "bad_request", f"not a valid HTTP/1.1 request: {msg}")
        self._refusal = None
        self._refuse(status, code, message)

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
        self._refuse(408, "request_timeout", f"request headers not received within {self.header_timeout_s:g} s")

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer in our JSON error format and end the connection: the rest of it cannot be trusted."""
        self._disarm()
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        if self.cycle is not None and not self.cycle.response_complete:
            # A request being answered (a bad chunk mid-body): its handler sees the client
            # gone, and whatever it sends afterwards is dropped, not written after our answer.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        body = json.dumps({"error": code, "message": message}).encode() + b"\n"
        reason = HTTPStatus(status).phrase
        self.transport.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n".encode()
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer, then end of stream; close once the client had time to read
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


def config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    # A subclass per server: the header deadline is a setting, the protocol a class uvicorn instantiates.
    protocol = type("HttpProtocol", (GuardedHttpToolsProtocol,), {"header_timeout_s": settings.header_timeout_s})
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": protocol,
        "timeout_keep_alive": 5,  # idle keep-alive connections
        "log_level": "warning",
        "access_log": False,  # our own JSON access line per request (app.edge.observability)
        "lifespan": "on",
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
