"""A closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending its next
request the moment the previous answer arrives.

Requests are pre-built bytes and answers are read with minimal parsing, so the client
costs little CPU on a machine it shares with the server (its own CPU time is reported).
It speaks plain HTTP to any URL that takes a raw image body (ours, TorchServe's
`/predictions/<model>`, ...) or, for ours, multipart `files`.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import uvloop  # the service's own event loop (a dependency): the client costs less CPU


@dataclass
class LevelResult:
    concurrency: int
    images_per_request: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of successful requests
    ok: int = 0
    errors: int = 0  # non-2xx other than 503, and broken connections
    shed: int = 0  # 503 (overloaded: the service said retry later)
    client_cpu_s: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        pct = _percentiles(self.latencies)
        return {
            "concurrency": self.concurrency,
            "images_per_request": self.images_per_request,
            "seconds": self.seconds,
            "requests_per_s": self.ok / self.seconds,
            "images_per_s": self.ok * self.images_per_request / self.seconds,
            "p50_ms": pct(0.50),
            "p95_ms": pct(0.95),
            "p99_ms": pct(0.99),
            "ok": self.ok,
            "errors": self.errors,
            "shed_503": self.shed,
            "client_cores": self.client_cpu_s / self.seconds,
        }


def _percentiles(latencies: list[float]) -> Callable[[float], float]:
    """q -> the q-quantile of `latencies` in milliseconds (NaN when there are none)."""
    lat = sorted(latencies)
    return lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")


def raw_request(url: str, body: bytes, content_type: str = "image/jpeg") -> bytes:
    u = urllib.parse.urlsplit(url)
    head = (
        f"POST {u.path or '/'}{'?' + u.query if u.query else ''} HTTP/1.1\r\nHost: {u.netloc}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def multipart_request(url: str, images: list[bytes], boundary: str = "benchmark-boundary-7d9f") -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{i}.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(images)
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return raw_request(url, body, f"multipart/form-data; boundary={boundary}")


class StaleConnection(ConnectionError):
    """The connection ended before a byte of the answer: a kept-alive one the server had closed."""


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, float]:
    """(status, keep-alive, Retry-After seconds or 0) after reading the whole response."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise StaleConnection() from None
        raise
    except ConnectionResetError:  # reset before the answer's head was complete: never answered
        raise StaleConnection() from None
    status = int(head[9:12])
    lower = head.lower()
    keep = b"connection: close" not in lower
    retry_after = 0.0
    at = lower.find(b"retry-after:")
    if at >= 0:
        retry_after = float(lower[at + 12 : lower.find(b"\r\n", at)])
    at = lower.find(b"content-length:")
    if at >= 0:
        end = lower.find(b"\r\n", at)
        await reader.readexactly(int(lower[at + 15 : end]))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, keep, retry_after


async def _connection(
    host: str,
    port: int,
    requests: list[bytes],
    offset: int,
    warm_until: float,
    stop_at: float,
    result: LevelResult,
    honour_retry_after: bool,
) -> None:
    i = offset
    reader = writer = None
    while time.perf_counter() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            started = time.perf_counter()
            writer.write(requests[i % len(requests)])
            i += 1
            status, keep, retry_after = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            if warm_until <= time.perf_counter() <= stop_at:
                result.errors += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
            continue
        finished = time.perf_counter()
        # Throughput counts the answers that arrive inside the window, whenever their request
        # left: at high concurrency a request lives for a second, and counting only those that
        # also started inside an 8 s window would undercount by an eighth.
        if warm_until <= finished <= stop_at:
            if 200 <= status < 300:
                result.ok += 1
                result.latencies.append(finished - started)
            elif status == 503:
                result.shed += 1
            else:
                result.errors += 1
        if not keep:
            assert writer is not None
            writer.close()
            reader = writer = None
        if status == 503 and honour_retry_after and retry_after:
            # What a station does with "overloaded": wait Retry-After, then send again.
            await asyncio.sleep(min(retry_after, max(0.0, stop_at - time.perf_counter())))
    if writer is not None:
        writer.close()


async def _level(
    url: str,
    requests: list[bytes],
    concurrency: int,
    images_per_request: int,
    warmup_s: float,
    seconds: float,
    honour_retry_after: bool,
) -> LevelResult:
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    result = LevelResult(concurrency, images_per_request, seconds)
    start = time.perf_counter()
    warm_until, stop_at = start + warmup_s, start + warmup_s + seconds
    cpu0 = os.times()
    await asyncio.gather(
        *(
            _connection(host, port, requests, c * 7, warm_until, stop_at, result, honour_retry_after)
            for c in range(concurrency)
        )
    )
    cpu1 = os.times()
    result.client_cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    result.client_cpu_s *= seconds / (time.perf_counter() - start)  # the measured window's share
    return result


def run_level(
    url: str,
    requests: list[bytes],
    concurrency: int,
    images_per_request: int,
    warmup_s: float,
    seconds: float,
    honour_retry_after: bool = True,
) -> LevelResult:
    return uvloop.run(_level(url, requests, concurrency, images_per_request, warmup_s, seconds, honour_retry_after))


# --- open loop, with deadlines (python -m benchmarks --deadline-ms D) ------------------------


@dataclass
class DeadlineResult:
    """One offered load: requests sent at a fixed rate whatever the answers, each with a budget."""

    offered_per_s: float
    deadline_ms: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of 200s
    ok: int = 0
    timely: int = 0  # 200s within the deadline: the goodput
    expired: int = 0  # 504
    shed: int = 0  # 503
    errors: int = 0
    late_sends: int = 0  # arrivals the client itself could not send on time (it is overloaded too)

    def as_dict(self) -> dict[str, float | int]:
        pct = _percentiles(self.latencies)
        return {
            "offered_per_s": self.offered_per_s,
            "deadline_ms": self.deadline_ms,
            "goodput_per_s": self.timely / self.seconds,
            "answered_per_s": self.ok / self.seconds,
            "timely": self.timely,
            "late_200": self.ok - self.timely,
            "expired_504": self.expired,
            "shed_503": self.shed,
            "errors": self.errors,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": pct(1.0),
            "late_sends": self.late_sends,
        }


def with_header(request: bytes, name: str, value: str) -> bytes:
    head, sep, body = request.partition(b"\r\n")
    return head + sep + f"{name}: {value}\r\n".encode() + body


async def _open_level(
    url: str, requests: list[bytes], rate: float, warmup_s: float, seconds: float, deadline_ms: int
) -> DeadlineResult:
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    result = DeadlineResult(rate, deadline_ms, seconds)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    start = time.perf_counter()
    warm_until, stop_at = start + warmup_s, start + warmup_s + seconds
    budget = deadline_ms / 1000

    async def one(request: bytes, due: float) -> None:
        conn = idle.pop() if idle else None
        while True:
            reused = conn is not None
            try:
                if conn is None:
                    conn = await asyncio.open_connection(host, port)
                reader, writer = conn
                writer.write(request)
                status, keep, _ = await _read_response(reader)
                break
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                if conn is not None:
                    conn[1].close()
                conn = None
                if reused and isinstance(exc, StaleConnection):
                    # A kept-alive connection the server closed while it sat idle in the pool
                    # (its keep-alive timeout): sent again on a new one, as HTTP clients do.
                    continue
                if warm_until <= due <= stop_at:
                    result.errors += 1
                return
        finished = time.perf_counter()
        if warm_until <= due <= stop_at:  # by when it was offered: the offered load is what counts
            if status == 200:
                result.ok += 1
                result.latencies.append(finished - due)  # from its arrival, as the deadline runs
                result.timely += finished - due <= budget
            elif status == 504:
                result.expired += 1
            elif status == 503:
                result.shed += 1
            else:
                result.errors += 1
        if keep:
            idle.append(conn)
        else:
            conn[1].close()

    tasks: set[asyncio.Task[None]] = set()
    i = 0
    while (due := start + i / rate) < stop_at:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.01 and warm_until <= due:
            result.late_sends += 1
        task = asyncio.ensure_future(
            one(with_header(requests[i % len(requests)], "X-Request-Timeout-Ms", str(deadline_ms)), due)
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    if tasks:
        await asyncio.wait(tasks, timeout=budget + 30)
    for _, writer in idle:
        writer.close()
    return result


def run_open_level(
    url: str, requests: list[bytes], rate: float, warmup_s: float, seconds: float, deadline_ms: int
) -> DeadlineResult:
    return uvloop.run(_open_level(url, requests, rate, warmup_s, seconds, deadline_ms))
