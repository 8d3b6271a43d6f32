"""uvicorn, configured: uvloop, httptools, timeouts for clients that hold a connection
without finishing a request (slow headers, idle sockets), and bounds on the request line
and headers. Slow or large bodies are bounded where the body is read (`app.edge.intake`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import ssl
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, ClassVar, cast

import uvicorn
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.edge.observability import LOG_CONFIG
from app.settings import HEADER_TIMEOUT_S, Settings

MAX_URL_BYTES = 8 * 1024  # the request target; ours are short, a long one is a probe or a mistake
# The request line and headers together. httptools itself has no bound: it would buffer a
# header of any size until the header deadline.
MAX_HEAD_BYTES = 64 * 1024
# After a refusal, bytes the client is still sending are read and dropped for this long
# before closing: closing with unread bytes would reset the connection, and a reset can
# destroy the answer before the client reads it.
LINGER_S = 1.0
OVER_CAP_LOG_INTERVAL_S = 60.0
HTTP09 = "HTTP/0.9 is not supported: send an HTTP/1.1 request line"


log = logging.getLogger("app.edge.server")


HEAD_REFUSAL = "head_refusal"  # the lifespan state's key for `app.edge.serve.head_refusal`
# The app's `state` attribute naming its door: (which requests, given method and path; the
# ASGI app the protocol runs for them instead of the whole application).
FRONT_DOORS = "front_doors"
Door = tuple[Callable[[str, str], bool], Any]


class _NoWaiter:
    def set(self) -> None:
        """Nobody waits for the body of a request answered from its head."""


class _Answered:
    """What stands in for a request answered from its head: a cycle whose response is complete."""

    response_complete = True
    disconnected = False
    # uvicorn sets it when the connection is lost; without it, a client closing its
    # connection after a refusal raised in `connection_lost` (a traceback per connection).
    message_event = _NoWaiter()


_ANSWERED = _Answered()


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
    max_connections = 1024  # open connections of this server (APP_MAX_CONNECTIONS, set by `config`)
    retry_after_s = 1
    refused_over_cap = 0  # per server, like the two above
    # The requests the app's door answers and the door itself, wrapped as uvicorn wraps the
    # whole app (proxy headers). Set per server by `config` from the app's `front_doors`: the
    # predict requests skip the framework's own layers (error pages, telemetry, body limit,
    # routing), which cost the front about a fifth of its time per request (docs/performance.md).
    door: ClassVar[Door | None] = None
    over_cap_logged_at = float("-inf")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # between the start of a request and the end of its headers
        self._head_raw = 0  # bytes received for this head (httptools buffers them)
        self._head_parsed = 0  # bytes of the request target and headers parsed so far
        self._ended_in_chunk = False  # a request ended inside the chunk being parsed
        self._after_pipelined = False  # this head began after a request that ended in the same chunk
        self._url_seen = False  # this head's request target has begun
        self._running: RequestResponseCycle | None = None  # the cycle whose task is answering
        self._refusal: tuple[int, str, str] | None = None
        self._refused = False
        self._answered_from_head = False  # the request being read was answered from its head

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # joins the server's set of open connections
        if len(self.connections) > self.max_connections:
            self._over_capacity()
            return
        self._arm()

    def _over_capacity(self) -> None:
        """Past the cap, a connection is answered before it sends a byte and closed at once,
        so its file descriptor is free again. (uvicorn's own `limit_concurrency` answers only
        once the headers have arrived, in plain text, holding the descriptor until then.)"""
        self._refused = True
        cls = type(self)  # one class per server (`config`)
        cls.refused_over_cap += 1
        now = self.loop.time()
        if now - cls.over_cap_logged_at >= OVER_CAP_LOG_INTERVAL_S:  # a flood must not flood the log too
            cls.over_cap_logged_at = now
            log.warning(
                "connection limit of %d reached: %d connection(s) refused so far; raise APP_MAX_CONNECTIONS "
                "(and the file-descriptor limit) if this is real traffic",
                self.max_connections,
                cls.refused_over_cap,
            )
        self.transport.write(
            _answer(
                503,
                "too_many_connections",
                f"the service holds its limit of {self.max_connections} connections; retry shortly",
                {"retry-after": str(self.retry_after_s)},
            )
        )
        # No linger, unlike `_refuse`: a flood must not hold descriptors for a second each.
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: drop what the client still sends
        self._ended_in_chunk = self._after_pipelined = False
        super().data_received(data)  # a callback's _Refused arrives in send_400_response
        if self._in_head and not self._refused:
            # The chunk ends inside a head, which httptools buffers with no limit of its own.
            if self._after_pipelined:
                # The head began after complete requests in this same chunk (pipelining),
                # at an offset the parser does not tell: its bytes here are what it has
                # reported of it (on_url, on_header) and the unfinished line after the last
                # line break. Counting the whole chunk counted the requests before it too:
                # 4,000 pipelined GETs were answered 431 (issue 19).
                newline = data.rfind(b"\n")
                self._head_raw = self._head_parsed + len(data) - newline - 1
            else:
                self._head_raw += len(data)  # the whole chunk is this head's
            version = self.parser.get_http_version()
            if self._url_seen and (version == "0.9" or (version == "0.0" and data.endswith(b"\n"))):
                # A request line that ended with no HTTP version (the parser names the
                # version once the next line begins): HTTP/0.9, whose client waits for a bare
                # body. Refused at once, not when the header deadline runs out.
                self._refuse(400, "bad_request", HTTP09)
                return
            if self._head_raw > MAX_HEAD_BYTES:
                self._refuse(
                    431, "request_headers_too_large", f"request line and headers exceed {MAX_HEAD_BYTES} bytes"
                )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # A request's budget runs from here, its first byte parsed: the head and the wait for
        # the event loop count too, which the middleware, later, could not see.
        self.scope["state"]["arrived"] = time.monotonic()
        self._in_head, self._head_raw, self._head_parsed, self._url_seen = True, 0, 0, False
        self._after_pipelined = self._ended_in_chunk
        if self._header_timer is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._url_seen = True
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
        version = self.parser.get_http_version()
        if version not in ("1.0", "1.1"):
            # llhttp accepts a request line with no version (HTTP/0.9) or "HTTP/2.0", and
            # uvicorn would answer either in HTTP/1.1: refused, as a request we do not speak.
            # (A 400, not 505: nothing a client sends gets a 5xx.)
            message = HTTP09 if version in ("0.0", "0.9") else f"HTTP/{version} is not supported; send HTTP/1.1"
            self._refusal = (400, "bad_request", message)
            raise _Refused()
        if self._refused_from_head():
            return
        super().on_headers_complete()

    def _refused_from_head(self) -> bool:
        """Answer a predict request the service would refuse for overload anyway from its head
        (`app.edge.serve.head_refusal`, set in the lifespan state), keeping the connection:
        its body is read and dropped as it arrives. Only on an idle keep-alive HTTP/1.1
        connection with no `Expect` (anything else takes the usual way)."""
        refusal = self.app_state.get(HEAD_REFUSAL)
        if (
            refusal is None
            or self.pipeline
            or (self.cycle is not None and not self.cycle.response_complete)
            or self.expect_100_continue
            or self.parser.get_method() != b"POST"
            or self.parser.get_http_version() != "1.1"
            or not self.parser.should_keep_alive()
        ):
            return False
        answer = refusal(self.url, self.headers, self.scope["state"]["arrived"])
        if answer is None:
            return False
        # A finished cycle stands in for the request: uvicorn drops the body of a request
        # whose response is complete, and starts the next request as usual.
        self.cycle = cast(RequestResponseCycle, _ANSWERED)
        self._answered_from_head = True
        self.transport.write(answer)
        return True

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to anything the parser rejects; ours is JSON and names the limit."""
        status, code, message = self._refusal or (400, "bad_request", f"not a valid HTTP/1.1 request: {msg}")
        self._refusal = None
        self._refuse(status, code, message)

    def on_message_complete(self) -> None:
        self._ended_in_chunk = True
        if self._answered_from_head:  # its body is all in: the connection idles as after any answer
            self._answered_from_head = False
            self.server_state.total_requests += 1
            if not self.transport.is_closing():
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )
            return
        super().on_message_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle  # pipelined requests start one after another, from the queue
        door = self.door
        if door is not None and app is self.app and door[0](cycle.scope["method"], cycle.scope["path"]):
            app = door[1]  # (`app is self.app`: not uvicorn's own refusal app)
        super()._start_asgi_task(cycle, app)

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
        # Requests being answered (a bad chunk mid-body; the one ahead of a bad pipelined
        # head): their handlers see the client gone, and whatever they send afterwards is
        # dropped, not written after our answer. Pipelined requests not yet started never are.
        self.pipeline.clear()
        for cycle in (self._running, self.cycle):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        self.transport.write(_answer(status, code, message))
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer, then end of stream; close once the client had time to read
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


def _answer(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 answer in our JSON error format, ending the connection."""
    body = json.dumps({"error": code, "message": message}).encode() + b"\n"
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"connection: close\r\n{extra}content-length: {len(body)}\r\n\r\n"
    ).encode() + body


# File descriptors the process needs besides client connections: the listening socket,
# stdio, the event loop's own, store and capture files open in worker threads (at most 32
# at once), and per inference worker its pipes and process handles.
FD_BASE = 64
FD_PER_WORKER = 8


class StartupRefused(Exception):
    """A setting the process cannot honour; `python -m app` prints it and exits 2."""


def connection_cap(settings: Settings) -> tuple[int, str | None]:
    """The connection cap this process can hold, and a warning if it is below the setting.

    Raises the soft RLIMIT_NOFILE to the hard one (the default soft limit, often 1024, is
    what ~20,000 idle connections exhausted, issue 19), then keeps room for everything that
    is not a connection: past the limit, accept() and every open() fail with EMFILE. A cap
    set explicitly that does not fit is refused; the default is lowered, with a warning.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    room = soft - FD_BASE - FD_PER_WORKER * settings.workers
    if settings.max_connections <= room:
        return settings.max_connections, None
    need = f"{FD_BASE} + {FD_PER_WORKER} per worker for files, workers and sockets"
    if "max_connections" in settings.model_fields_set or room < 1:
        raise StartupRefused(
            f"APP_MAX_CONNECTIONS {settings.max_connections} does not fit the file-descriptor limit of "
            f"{soft} (hard limit {hard}) with room for {need}: set it to at most {max(room, 0)}, "
            "or raise the limit (ulimit -n, LimitNOFILE=, the container's nofile)"
        )
    return room, (
        f"connections capped at {room}, not {settings.max_connections}: the file-descriptor limit is {soft} "
        f"and {need} are kept free; raise the limit (ulimit -n) to allow more"
    )


def tls_options(settings: Settings) -> dict[str, Any]:
    """HTTPS when a certificate is set; with a client CA, a client must present a
    certificate that CA signed, or the handshake fails before any HTTP is read."""
    if settings.tls_cert_file is None:
        return {}
    options: dict[str, Any] = {"ssl_certfile": str(settings.tls_cert_file), "ssl_keyfile": str(settings.tls_key_file)}
    if settings.tls_client_ca_file is not None:
        options |= {"ssl_ca_certs": str(settings.tls_client_ca_file), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options


def config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    cap, warning = connection_cap(settings)
    # A subclass per server: the deadline and the cap are settings, the protocol a class uvicorn instantiates.
    protocol: type[GuardedHttpToolsProtocol] = type(
        "HttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout_s": settings.header_timeout_s,
            "max_connections": cap,
            "retry_after_s": settings.retry_after_s,
        },
    )
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": protocol,
        "timeout_keep_alive": 5,  # idle keep-alive connections
        "log_level": "warning",
        "log_config": LOG_CONFIG,  # uvicorn's own warnings as JSON lines too
        "access_log": False,  # our own JSON access line per request (app.edge.observability)
        "lifespan": "on",
        **tls_options(settings),
    }
    options.update(overrides)
    result = uvicorn.Config(app, **options)  # applies the logging configuration
    door: Door | None = getattr(getattr(app, "state", None), FRONT_DOORS, None)
    if door is not None and result.proxy_headers:  # as `Config.load` wraps the whole app
        door = (door[0], ProxyHeadersMiddleware(door[1], result.forwarded_allow_ips))
    protocol.door = door
    if warning:
        log.warning(warning)
    return result
