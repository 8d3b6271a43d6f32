"""HTTP spoken by hand over a socket: for requests no client library would send (huge
heads, lying or missing lengths, bodies that never finish, slow bytes)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int  # 0: the server closed the connection without answering
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(
    port: int, chunks: list[bytes], *, pause: float = 0.0, timeout: float = 15.0, keep_open: bool = True
) -> Reply:
    """Send `chunks` to 127.0.0.1:`port` (`pause` seconds apart), then read one response.

    With `keep_open` the sending side stays open after the last chunk, as a slow or
    stalled client's would; otherwise it is shut down (the client went away).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        deadline = time.monotonic() + timeout
        for i, chunk in enumerate(chunks):
            if i and pause:
                time.sleep(pause)
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server already answered and closed; read what it said
        if not keep_open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        return _read_reply(sock, deadline)


def _read_reply(sock: socket.socket, deadline: float) -> Reply:
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = _recv(sock, deadline)
            if not chunk:
                return Reply(0, {}, data)
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 1"):
            break
        data = body  # an interim answer (100 Continue): the real one follows
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = _recv(sock, deadline)
        if not chunk:
            break
        body += chunk
    return Reply(status, headers, body[:length])


def _recv(sock: socket.socket, deadline: float) -> bytes:
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        return sock.recv(65536)
    except (TimeoutError, ConnectionResetError):
        return b""


# --- several answers on one connection (pipelining) -------------------------------------


def exchange_many(port: int, data: bytes, count: int, *, timeout: float = 30.0) -> list[Reply]:
    """Send `data` (any number of requests, pipelined) at once, then read up to `count`
    answers from the same connection; fewer if the server closes it first."""
    replies: list[Reply] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        deadline = time.monotonic() + timeout

        def send() -> None:
            with contextlib.suppress(OSError):  # the server may answer and close before it has read all
                sock.sendall(data)

        # Sent from another thread: the answers are read meanwhile, so neither side's buffers fill up.
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        buffer = b""
        while len(replies) < count:
            while b"\r\n\r\n" not in buffer:
                chunk = _recv(sock, deadline)
                if not chunk:
                    return replies
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(buffer) < length:
                chunk = _recv(sock, deadline)
                if not chunk:
                    return replies
                buffer += chunk
            replies.append(Reply(int(lines[0].split()[1]), headers, buffer[:length]))
            buffer = buffer[length:]
        sender.join(timeout=max(0.0, deadline - time.monotonic()))
    return replies
