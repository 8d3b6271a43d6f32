"""Deadlines: work whose budget ran out is never decoded or batched, and its client hears so
at once (504), not after the queue drains."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest

from app.serving.pipeline import DeadlineExceeded, Overloaded
from tests.utils.factories import image_bytes
from tests.utils.pipelines import checked, load, running_pipeline, stopped
from tests.utils.server import LiveServer

pytestmark = pytest.mark.slow  # worker processes

IMAGE = image_bytes(41, (96, 80))


def test_an_expired_request_leaves_the_queue_at_once_and_is_never_batched(bundles, keys) -> None:
    batches: list[int] = []

    async def scenario() -> tuple[float, str, int, list[int]]:
        async with running_pipeline(workers=1, on_batch=lambda n, d, f: batches.append(n)) as p:
            v = await load(p, bundles["v1"], keys[1])
            (pid,) = p.pool.pids()
            assert pid is not None
            with stopped(pid):
                busy = asyncio.ensure_future(p.predict(v, checked([IMAGE])))  # the worker takes it
                await asyncio.sleep(0.2)
                started = time.monotonic()
                with pytest.raises(DeadlineExceeded) as exc:
                    await p.predict(v, checked([IMAGE, IMAGE]), deadline=time.monotonic() + 0.3)
                waited = time.monotonic() - started
                queued = p.admission.images  # only the busy one is still counted
            await busy
            return waited, exc.value.stage, queued, list(batches)

    waited, stage, queued, sizes = asyncio.run(scenario())
    assert stage == "queue"
    assert waited < 2.0  # at its deadline, not when the worker came back
    assert queued == 1
    assert sizes == [1]  # the expired request's two images never reached a worker
    print(f"expired request answered after {waited * 1000:.0f} ms (budget 300 ms)")


def test_when_the_oldest_has_waited_half_its_budget_the_newest_goes_first(bundles, keys) -> None:
    """Under overload the oldest queued work would be answered late if at all: the newest is
    served first (and within its budget), the oldest after it while there is still time."""

    async def scenario() -> tuple[list[str], float]:
        async with running_pipeline(workers=1, max_batch=1) as p:
            v = await load(p, bundles["v1"], keys[1])
            (pid,) = p.pool.pids()
            assert pid is not None
            done: list[str] = []

            async def one(name: str, budget_s: float) -> None:
                await p.predict(v, checked([IMAGE]), deadline=time.monotonic() + budget_s)
                done.append(name)

            with stopped(pid):
                busy = asyncio.ensure_future(p.predict(v, checked([IMAGE])))  # the worker takes it
                await asyncio.sleep(0.1)
                old = asyncio.ensure_future(one("old", 3.0))
                await asyncio.sleep(1.7)  # more than half of its 3 s spent waiting: behind
                new = asyncio.ensure_future(one("new", 3.0))
                await asyncio.sleep(0.05)
                resumed = time.monotonic()
            await asyncio.gather(busy, old, new)
            return done, time.monotonic() - resumed

    order, took = asyncio.run(scenario())
    assert order == ["new", "old"]  # in order of arrival it would be old, new
    assert took < 1.0  # both still answered within their budgets


def test_a_queue_that_keeps_up_is_served_oldest_first(bundles, keys) -> None:
    async def scenario() -> list[str]:
        async with running_pipeline(workers=1, max_batch=1) as p:
            v = await load(p, bundles["v1"], keys[1])
            (pid,) = p.pool.pids()
            assert pid is not None
            done: list[str] = []

            async def one(name: str) -> None:
                await p.predict(v, checked([IMAGE]), deadline=time.monotonic() + 5.0)
                done.append(name)

            with stopped(pid):
                busy = asyncio.ensure_future(p.predict(v, checked([IMAGE])))
                await asyncio.sleep(0.1)
                first = asyncio.ensure_future(one("first"))
                await asyncio.sleep(0.2)  # well under half of its 5 s
                second = asyncio.ensure_future(one("second"))
                await asyncio.sleep(0.05)
            await asyncio.gather(busy, first, second)
            return done

    assert asyncio.run(scenario()) == ["first", "second"]


def test_a_request_past_its_budget_gets_a_504_promptly_and_is_counted(store, keys) -> None:
    with LiveServer(store.root, keys[1], workers=1) as srv:
        srv.wait_ready()
        (pid,) = srv.app.state.service.host.pipeline.pool.pids()
        first: list[httpx.Response] = []
        with stopped(pid):
            blocker = threading.Thread(
                target=lambda: first.append(
                    httpx.post(
                        f"{srv.url}/v1/predict", content=IMAGE, headers={"Content-Type": "image/jpeg"}, timeout=30
                    )
                )
            )
            blocker.start()
            time.sleep(0.3)
            started = time.monotonic()
            r = httpx.post(
                f"{srv.url}/v1/predict",
                content=IMAGE,
                headers={"Content-Type": "image/jpeg", "X-Request-Timeout-Ms": "300"},
                timeout=30,
            )
            waited = time.monotonic() - started
        blocker.join(timeout=30)
        assert r.status_code == 504, r.text
        assert r.json()["error"] == "deadline_exceeded" and "300 ms" in r.json()["message"]
        assert waited < 2.0
        assert first[0].status_code == 200  # the request without a budget of its own waited
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'deadline_exceeded_total{stage="queue"} 1.0' in metrics


def test_a_request_whose_budget_the_queue_ahead_would_use_up_is_shed_before_its_body(bundles, keys) -> None:
    """Admitted, it would be read, checked and dropped at its deadline: under overload that
    wasted work is what starves the workers. It is refused at once instead (503)."""

    async def scenario() -> tuple[bool, bool]:
        async with running_pipeline(workers=1) as p:
            v = await load(p, bundles["v1"], keys[1])
            (pid,) = p.pool.pids()
            assert pid is not None
            p._image_s = 0.05  # as measured under load: 50 ms a batch image on this worker
            with stopped(pid):
                queued = [asyncio.ensure_future(p.predict(v, checked([IMAGE]))) for _ in range(10)]
                await asyncio.sleep(0.2)
                # 10 images ahead at 50 ms each: a 300 ms budget cannot be met, 5 s can.
                with pytest.raises(Overloaded, match="more than is left of this request's budget"):
                    p.refuse_if_full(time.monotonic() + 0.3)
                p.refuse_if_full(time.monotonic() + 5.0)
                p.refuse_if_full(None)  # no budget: only the bounds
            await asyncio.gather(*queued)
            p.refuse_if_full(time.monotonic() + 0.3)  # the queue drained: admitted again
            return True, True

    assert asyncio.run(scenario()) == (True, True)


def test_the_budget_runs_from_the_first_byte_of_the_request(server) -> None:
    """A head that took longer than the budget to arrive is past it: the budget runs from the
    request's arrival, not from when the application first saw it."""
    host, port = server.url.removeprefix("http://").split(":")
    head = (
        "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        f"X-Request-Timeout-Ms: 300\r\nContent-Length: {len(IMAGE)}\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head)
        time.sleep(0.5)  # the rest of the head, and the body, after the budget
        s.sendall(b"\r\n" + IMAGE)
        reply = s.recv(65536).decode("latin-1")
    assert reply.startswith("HTTP/1.1 504"), reply
    assert "deadline_exceeded" in reply


@pytest.mark.parametrize("value", ["0", "-5", "abc", "600001", "1.5"])
def test_a_malformed_budget_is_refused(server, value: str) -> None:
    r = httpx.post(
        f"{server.url}/v1/predict",
        content=IMAGE,
        headers={"Content-Type": "image/jpeg", "X-Request-Timeout-Ms": value},
    )
    assert r.status_code == 422 and r.json()["error"] == "invalid_request_timeout", r.text


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer off a keep-alive socket: status, headers, body (by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed before an answer"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(rest) < int(headers["content-length"]):
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), headers, rest


def test_an_overloaded_predict_is_refused_from_its_head_and_the_connection_stays_usable(store, keys, caplog) -> None:
    """Under overload a refusal must cost the front as little as possible (at 4x it spent
    most of a core refusing through the application): the 503 is written once the head is
    parsed, its body is read and dropped, and the same keep-alive connection then serves the
    next request as usual."""
    request = (
        b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: %d\r\n\r\n" % len(IMAGE) + IMAGE
    )
    with LiveServer(store.root, keys[1], workers=1, queue_bound=1, max_images_per_request=1) as srv:
        srv.wait_ready()
        (pid,) = srv.app.state.service.host.pipeline.pool.pids()
        first: list[httpx.Response] = []
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            with stopped(pid):
                blocker = threading.Thread(
                    target=lambda: first.append(
                        httpx.post(f"{srv.url}/v1/predict", content=IMAGE, headers={"Content-Type": "image/jpeg"})
                    )
                )
                blocker.start()
                time.sleep(0.3)  # its one image fills the queue's bound
                sock.sendall(request)
                status, headers, body = _read_answer(sock)
                assert status == 503 and headers["retry-after"] == "1", body
                assert "close" not in headers.get("connection", "")  # kept open
                assert json.loads(body)["error"] == "overloaded"
                # The protocol's door answers in the protocol's error shape.
                with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as oip:
                    oip.sendall(
                        b"POST /v2/models/parcel-damage/infer HTTP/1.1\r\nHost: t\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
                    )
                    status, _, body = _read_answer(oip)
                    assert status == 503 and json.loads(body)["error"].startswith("overloaded: "), body
                time.sleep(0.3)  # the client closed the refused connection: the server sees it go
                lost = [r for r in caplog.records if r.exc_info or "Exception in callback" in r.getMessage()]
                assert not lost, lost[0].getMessage()
            blocker.join(timeout=30)
            assert first[0].status_code == 200
            sock.sendall(request)  # the same connection, the queue drained
            status, _, body = _read_answer(sock)
            assert status == 200, body
            assert json.loads(body)["results"][0]["decision"] in ("intact", "damaged")
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'admission_refusals_total{reason="overloaded"} 2.0' in metrics
