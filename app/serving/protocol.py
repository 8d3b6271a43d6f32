"""Frames between the front process and its inference workers, over a socketpair.

A frame is `[u32 header length][u32 payload length][JSON header][payload]`; the header's
`blobs` lists the lengths the payload splits into (images, weights, manifests). Bytes
travel as bytes: nothing is pickled, in either direction.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

_PREFIX = struct.Struct("<II")
# A frame larger than this is a bug, not a workload: 64 images of 20 MiB is 1.25 GiB, and a
# batch never holds that many; bundles of every supported architecture are far smaller.
MAX_FRAME = 4 * 1024**3 - 1

Header = dict[str, Any]


def encode(header: Header, blobs: list[bytes] | tuple[bytes, ...] = ()) -> list[bytes]:
    """The frame as a list of buffers (written with writelines/sendmsg, never joined)."""
    head = json.dumps({**header, "blobs": [len(b) for b in blobs]}, separators=(",", ":")).encode()
    total = sum(len(b) for b in blobs)
    if total > MAX_FRAME:
        raise ValueError(f"frame payload of {total} bytes is too large")
    return [_PREFIX.pack(len(head), total), head, *blobs]


def _split(head: bytes, payload: bytes | bytearray) -> tuple[Header, list[bytes]]:
    header: Header = json.loads(head)
    blobs, offset = [], 0
    view = memoryview(payload)
    for n in header.pop("blobs"):
        blobs.append(bytes(view[offset : offset + n]))
        offset += n
    return header, blobs


# --- blocking side (the worker) ------------------------------------------------------------


def _recv_exactly(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise EOFError("the other end closed the connection")
        got += k
    return buf


def recv_frame(sock: socket.socket) -> tuple[Header, list[bytes]]:
    head_len, total = _PREFIX.unpack(_recv_exactly(sock, _PREFIX.size))
    head = _recv_exactly(sock, head_len)
    return _split(bytes(head), _recv_exactly(sock, total))


def send_frame(sock: socket.socket, header: Header, blobs: list[bytes] | tuple[bytes, ...] = ()) -> None:
    for part in encode(header, blobs):
        sock.sendall(part)


# --- asyncio side (the front) --------------------------------------------------------------


async def read_frame(reader: asyncio.StreamReader) -> tuple[Header, list[bytes]]:
    head_len, total = _PREFIX.unpack(await reader.readexactly(_PREFIX.size))
    head = await reader.readexactly(head_len)
    return _split(head, await reader.readexactly(total))
