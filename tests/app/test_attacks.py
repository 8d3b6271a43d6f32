"""What an attacker found (issue 19), against a real server: a stuck worker is replaced and
its batch answered, bodies of all requests together are bounded, management bodies are
never read before the token, anonymous parity cannot queue control work at will, and
scrapes cannot make the front compute drift for every station on each request."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import deque
from pathlib import Path

import httpx
import pytest

from app.edge.errors import status_for
from app.ops.model_host import Loaded
from app.serving.pipeline import WorkerFailed
from tests.utils.factories import image_bytes, make_monitored_bundle, parcel_photo
from tests.utils.pipelines import stopped
from tests.utils.server import ADMIN_TOKEN, LiveServer, admin
from tests.utils.waiting import eventually

pytestmark = pytest.mark.slow

IMAGE = image_bytes(11, (96, 80))


def _predict(url: str, timeout: float = 30.0) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", content=IMAGE, headers={"Content-Type": "image/jpeg"}, timeout=timeout)


def test_a_worker_failure_is_a_503_to_retry_not_a_500() -> None:
    assert status_for(WorkerFailed("inference worker 0 exited")) == 503


def test_a_stopped_worker_fails_its_batch_with_503_and_is_replaced(store, keys) -> None:
    with LiveServer(store.root, keys[1], workers=1, batch_timeout_s=2.0) as srv:
        srv.wait_ready()
        pipeline = srv.app.state.service.host.pipeline
        (pid,) = pipeline.pool.pids()
        with stopped(pid):
            started = time.monotonic()
            r = _predict(srv.url)  # before: waited for as long as the worker stayed stopped
            waited = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "worker_restarting"
        assert "did not finish within 2 s" in r.json()["message"]
        assert r.headers["retry-after"]
        print(f"stopped worker: answered 503 after {waited:.1f}s (deadline 2 s)")
        eventually(lambda: _predict(srv.url).status_code == 200, timeout=60, what="a predict after the restart")
        assert pipeline.pool.pids()[0] not in (None, pid)
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert "worker_deadline_kills_total 1.0" in metrics


def test_a_stopped_idle_worker_is_found_by_its_ping_and_readiness_says_so(store, keys) -> None:
    with LiveServer(store.root, keys[1], workers=1, batch_timeout_s=1.0) as srv:
        srv.wait_ready()
        pipeline = srv.app.state.service.host.pipeline
        (pid,) = pipeline.pool.pids()
        with stopped(pid):
            # No request at all: the ping (every 5 s) finds it, /readyz turns 503 meanwhile.
            body = eventually(
                lambda: (r := httpx.get(f"{srv.url}/readyz")).status_code == 503 and r.json(),
                timeout=30,
                what="/readyz to say no worker answers",
            )
            assert "no inference worker is answering" in body["reason"]
            eventually(lambda: pipeline.pool.pids()[0] not in (None, pid), timeout=30, what="a new worker")
        srv.wait_ready(timeout=60)
        assert _predict(srv.url).status_code == 200


def _send_partial_multipart(port: int, size: int, hold: threading.Event, replies: list[bytes]) -> None:
    """A multipart predict that sends `size` bytes of an image part and then waits, as a slow
    (or hostile) client would, never sending the closing boundary until `hold` is set."""
    boundary = b"slowpoke"
    head = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")  # fmt: skip
    total = len(head) + size + 64
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=" + boundary
            + b"\r\nContent-Length: " + str(total).encode() + b"\r\n\r\n" + head + b"\0" * size
        )  # fmt: skip
        s.settimeout(0.2)
        data = b""
        while not hold.is_set() and b"\r\n\r\n" not in data:
            try:
                data += s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
        replies.append(data)


def test_request_bodies_of_all_clients_together_are_bounded(store, keys) -> None:
    """Each body alone is under its limit; together they pass the budget: the next client is
    told 503 (retry) at once instead of the front growing by every connection's body."""
    mib = 1024 * 1024
    with LiveServer(
        store.root,
        keys[1],
        workers=1,
        max_image_bytes=2 * mib,
        max_request_bytes=2 * mib,
        max_body_bytes_in_flight=4 * mib,
        body_timeout_s=20,
    ) as srv:
        srv.wait_ready()
        hold, replies = threading.Event(), list[bytes]()
        senders = [
            threading.Thread(target=_send_partial_multipart, args=(srv.port, int(1.5 * mib), hold, replies))
            for _ in range(2)
        ]
        for t in senders:
            t.start()
        budget = srv.app.state.service.bodies
        eventually(lambda: budget.held >= 3 * mib, timeout=20, what="two slow bodies in memory")
        third: list[bytes] = []
        _send_partial_multipart(srv.port, int(1.5 * mib), threading.Event(), third)
        assert third[0].startswith(b"HTTP/1.1 503"), third[0][:200]
        assert b"request bodies in flight" in third[0]
        assert _predict(srv.url).status_code == 200  # a small request still fits
        hold.set()
        for t in senders:
            t.join(timeout=30)
        eventually(lambda: budget.held == 0, timeout=30, what="the budget to be given back")


def _raw(port: int, head: bytes, wait: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head)
        data = b""
        with contextlib.suppress(TimeoutError):
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/shadow"),
        ("DELETE", "/v1/shadow"),
        ("PUT", "/v1/canary"),
        ("DELETE", "/v1/canary"),
        ("POST", "/v1/canary/promote"),
        ("POST", "/v1/models/v2/activate"),
        ("POST", "/v1/models/rollback"),
    ],
)
def test_management_bodies_are_not_read_before_the_token(server, method, path) -> None:
    """A declared 10 GB body with no token: a 401 at once, no `100 Continue`, nothing read."""
    head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 10000000000\r\nExpect: 100-continue\r\n\r\n").encode()  # fmt: skip
    reply = _raw(server.port, head)
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    # With the token, the declared size alone is refused before a byte is read.
    with_token = head.replace(b"Host: x\r\n", f"Host: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n".encode())
    reply = _raw(server.port, with_token)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_a_management_body_that_trickles_is_cut_at_the_body_deadline(store, keys) -> None:
    with LiveServer(store.root, keys[1], admin_token=ADMIN_TOKEN, body_timeout_s=1.0) as srv:
        srv.wait_ready()
        head = (f"PUT /v1/shadow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{").encode()  # fmt: skip
        started = time.monotonic()
        reply = _raw(srv.port, head, wait=15)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert time.monotonic() - started < 10  # the attack held a connection 75 s


def test_shadow_and_activate_still_take_their_bodies(server) -> None:
    r = httpx.put(f"{server.url}/v1/shadow", json={"version": "v2", "fraction": 0.5}, headers=admin(), timeout=60)
    assert r.status_code == 200, r.text
    assert httpx.get(f"{server.url}/v1/shadow", headers=admin()).json()["shadow"]["fraction"] == 0.5
    r = httpx.request("DELETE", f"{server.url}/v1/shadow", json={"reason": "done"}, headers=admin(), timeout=60)
    assert r.status_code == 200 and r.json()["reason"] == "done", r.text
    r = httpx.put(f"{server.url}/v1/shadow", json={"version": "v2", "fraction": 2}, headers=admin())
    assert r.status_code == 422 and "fraction" in r.json()["message"]


def test_anonymous_parity_callers_share_one_run(server) -> None:
    """16 callers at once: one run of the reference images on the workers, not 16 runs that
    each go ahead of station images."""

    def runs() -> float:
        line = next(ln for ln in httpx.get(f"{server.url}/metrics").text.splitlines() if ln.startswith("parity_runs"))
        return float(line.split()[-1])

    async def callers() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.get(f"{server.url}/v1/parity") for _ in range(16)))

    before = runs()
    replies = asyncio.run(callers())
    assert all(r.status_code == 200 and r.json()["passed"] for r in replies)
    assert runs() - before == 1
    again = httpx.get(f"{server.url}/v1/parity")
    assert again.status_code == 200 and "age" in again.headers
    assert runs() - before == 1  # reused while fresh


def test_scrapes_compute_drift_once_and_off_the_event_loop(monkeypatch, keys, tmp_path: Path) -> None:
    """Forty scrapers at once with 300 stations: one PSI and quality-estimate computation, in a
    thread (before: one per scrape, on the event loop, which pushed good predicts from 13 ms
    to 1.2 s)."""
    from app.ops import drift as monitor_module
    from model_store import estimate as quality
    from model_store import monitoring as mon

    bundle = make_monitored_bundle(tmp_path / "m1", keys[0], "m1", [parcel_photo(i) for i in range(40)])
    loaded = Loaded("m1", bundle.manifest, bundle.manifest_sha256, None, 0.0)  # type: ignore[arg-type]
    assert loaded.manifest.monitoring is not None
    threads: set[str] = set()
    real_psi = mon.psi

    def watched_psi(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return real_psi(*args, **kwargs)

    monkeypatch.setattr(mon, "psi", watched_psi)
    real_estimate = quality.of_decisions

    def watched_estimate(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return real_estimate(*args, **kwargs)

    monkeypatch.setattr(quality, "of_decisions", watched_estimate)
    m = monitor_module.Monitor(window=50, max_stations=400)
    for i in range(300):  # each with its scores and its camera's image features
        m.windows[("m1", f"station-{i}")] = monitor_module.Window(deque([0.5] * 50), deque([False] * 50), {}, 50)
        image_features = {f: deque([0.5] * 50) for f in mon.FEATURES if f != "score"}
        m.windows[(None, f"station-{i}")] = monitor_module.Window(features=image_features, images=50)
    computations = []
    real_gauges = monitor_module._gauges

    def counted(*args):
        computations.append(1)
        return real_gauges(*args)

    monkeypatch.setattr(monitor_module, "_gauges", counted)

    async def scrapes() -> None:
        await asyncio.gather(*(m.refresh_gauges(loaded) for _ in range(40)))
        await m.refresh_gauges(loaded)  # still fresh: reused

    asyncio.run(scrapes())
    assert computations == [1]
    assert len(m.gauges(loaded)["drift_psi"]) == 300 * len(loaded.manifest.monitoring.features)
    assert len(m.gauges(loaded)["estimated_cost_alarm"]) == 300  # the estimates too, in the same computation
    assert threads and threading.main_thread().name not in threads
