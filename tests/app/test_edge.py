"""The HTTP edge (issue 19), against `python -m app` as ops run it: a bound on connections
answered at once with a JSON 503; pipelined requests all answered; HTTP/0.9 refused; a
client hanging up mid-body counted as 499; every log line JSON, uvicorn's too; wrong tokens
slow their client down; no refusal names a server path; a connection cap the process's
file-descriptor limit cannot hold stops startup."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from model_store import activation
from model_store.store import FilesystemStore
from tests.utils.rawhttp import Reply, exchange, exchange_many
from tests.utils.server import ADMIN_TOKEN, ServiceProcess, admin
from tests.utils.waiting import eventually

pytestmark = pytest.mark.slow

CAP = 20
STATION_TOKEN = "test-station-token-0123456789"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, keys, bundles) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("edge")
    store = FilesystemStore(root / "store", keys[1])
    store.import_bundle(bundles["v1"], actor="fixture")
    activation.activate(store, "v1", actor="fixture")
    env = {
        "APP_STORE": str(store.root),
        "APP_PUBLIC_KEY": str(keys[1]),
        "APP_ADMIN_TOKEN": ADMIN_TOKEN,
        "APP_STATION_TOKEN": STATION_TOKEN,
        "APP_WORKERS": "1",
        "APP_MAX_CONNECTIONS": str(CAP),
        "TMPDIR": str(root),
    }
    with ServiceProcess(env, root / "service.log") as svc:
        svc.wait_ready()
        yield svc


def _client(source: str) -> httpx.Client:
    """A client from another loopback address: the service tells clients apart by address."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=10)


def _metric(service: ServiceProcess, route: str, status: int) -> float:
    text = httpx.get(f"{service.url}/metrics").text
    for line in text.splitlines():
        if line.startswith("http_requests_total{") and f'route="{route}"' in line and f'status="{status}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_connections_over_the_cap_get_a_json_503_at_once(service: ServiceProcess) -> None:
    idle = []
    try:
        for _ in range(CAP):
            idle.append(socket.create_connection(("127.0.0.1", service.port), timeout=10))
        time.sleep(0.3)  # let the service accept them all before the next one
        started = time.monotonic()
        reply = exchange(service.port, [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"], timeout=5)
        elapsed = time.monotonic() - started
        print(f"\nover the cap: {reply.status} after {elapsed * 1000:.0f} ms")
        assert reply.status == 503, reply
        assert reply.json()["error"] == "too_many_connections" and reply.json()["message"]
        assert int(reply.headers["retry-after"]) >= 1 and reply.headers["connection"] == "close"
        # An idle one goes away: a new connection is served again.
        idle.pop().close()

        def served() -> Reply | None:
            reply = exchange(service.port, [b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"])
            return reply if reply.status != 503 else None

        r = eventually(served, timeout=10, what="a connection to be served again")
        assert r.status == 200 and r.json()["ready"] is True
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    assert httpx.get(f"{service.url}/readyz").status_code == 200
    assert "connection limit of 20 reached" in service.log.read_text()  # the operator is told


def test_pipelined_gets_are_all_answered(service: ServiceProcess) -> None:
    count = 4000
    replies = exchange_many(service.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * count, count)
    statuses = {r.status for r in replies}
    assert len(replies) == count and statuses == {200}, (len(replies), statuses, replies[0].body[:200])


def test_an_oversized_head_behind_pipelined_requests_is_still_refused_cleanly(service: ServiceProcess) -> None:
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"h" * 70_000  # never finished
    replies = exchange_many(service.port, get * 10 + big, 11)
    assert replies and replies[-1].status == 431, [r.status for r in replies]
    assert replies[-1].json()["error"] == "request_headers_too_large"
    # The requests ahead of it were being answered when the connection was refused: their
    # answers are dropped, not written after the refusal (which was a 500, "write after EOF").
    time.sleep(0.3)
    assert _metric(service, "/healthz", 500) == 0
    assert "Traceback" not in service.log.read_text()


@pytest.mark.parametrize("wire", [b"GET /healthz\r\n", b"GET /healthz\r\n\r\n", b"GET /healthz HTTP/2.0\r\n\r\n"])
def test_a_request_line_without_http_1_is_refused(service: ServiceProcess, wire: bytes) -> None:
    started = time.monotonic()
    reply = exchange(service.port, [wire], timeout=5)
    elapsed = time.monotonic() - started
    assert reply.status == 400, reply
    assert reply.json()["error"] == "bad_request" and "HTTP/" in reply.json()["message"]
    assert reply.headers["connection"] == "close"
    assert elapsed < 5  # at once, not when the header deadline (10 s) runs out


@pytest.mark.parametrize(
    ("method", "path", "headers", "content_type", "start"),
    [
        # Bodies are read by the routes, after the token (app.edge.intake.read_json).
        ("PUT", "/v1/shadow", {"Authorization": f"Bearer {ADMIN_TOKEN}"}, "application/json", b'{"reason": "'),
        ("POST", "/v1/models/rollback", {"Authorization": f"Bearer {ADMIN_TOKEN}"}, "application/json", b'{"r'),
        # Predict, through the protocol's door: a raw image, and multipart (once a 422).
        ("POST", "/v1/predict", {}, "image/jpeg", b"\xff\xd8\xff\xe0"),
        (
            "POST",
            "/v1/predict",
            {},
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\n\xff\xd8',
        ),
    ],
)
def test_a_client_hanging_up_mid_body_is_counted_as_499(
    service: ServiceProcess, method: str, path: str, headers: dict[str, str], content_type: str, start: bytes
) -> None:
    before = _metric(service, path, 499)
    others = {status: _metric(service, path, status) for status in (400, 422, 500)}
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 1000\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    reply = exchange(service.port, [head.encode() + b"\r\n" + start], keep_open=False, timeout=10)
    assert reply.status == 0  # nobody left to answer
    eventually(lambda: _metric(service, path, 499) > before, timeout=10, what="a 499 counted")
    assert {status: _metric(service, path, status) for status in others} == others  # nothing else counted


def test_every_log_line_is_json_uvicorns_own_warnings_too(service: ServiceProcess) -> None:
    reply = exchange(service.port, [b"HELLO THERE\r\n\r\n"])  # uvicorn warns "Invalid HTTP request received."
    assert reply.status == 400
    time.sleep(0.3)
    lines = [line for line in service.log.read_text().splitlines() if line.strip()]
    assert lines
    not_json = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert not not_json, not_json[:5]
    assert any(json.loads(line).get("logger", "").startswith("uvicorn") for line in lines)


def test_wrong_tokens_slow_their_client_down(service: ServiceProcess) -> None:
    with _client("127.0.0.2") as guesser, _client("127.0.0.3") as other:
        statuses = [
            guesser.get(f"{service.url}/v1/models", headers=admin(f"guess-{i:02d}-0123456789abcdef")).status_code
            for i in range(30)
        ]
        assert statuses[0] == 401
        assert 429 in statuses, statuses
        refused = guesser.get(f"{service.url}/v1/models", headers=admin())  # even the right token, for now
        assert refused.status_code == 429 and refused.json()["error"] == "too_many_token_failures"
        assert int(refused.headers["retry-after"]) >= 1
        print(f"\nwrong tokens: first 429 after {statuses.index(429)} failures")
        assert other.get(f"{service.url}/v1/models", headers=admin()).status_code == 200  # another client is not
    with _client("127.0.0.4") as station:
        feedback = {"request_id": "r1", "labels": ["damaged"]}
        statuses = [
            station.post(
                f"{service.url}/v1/feedback", json=feedback, headers=admin(f"g{i:02d}-0123456789abcdef")
            ).status_code
            for i in range(30)
        ]
        assert 429 in statuses, statuses
        assert (
            station.post(f"{service.url}/v1/feedback", json=feedback, headers=admin(STATION_TOKEN)).status_code == 429
        )


def test_refusals_never_name_a_server_path(service: ServiceProcess) -> None:
    store = service.env["APP_STORE"]
    answers = [
        httpx.get(f"{service.url}/v1/models/v9", headers=admin()),
        httpx.post(f"{service.url}/v1/models/v9/activate", headers=admin()),
        httpx.get(f"{service.url}/v1/parity", params={"version": "v9"}, headers=admin()),
    ]
    for r in answers:
        assert r.status_code == 404 and r.json()["error"] == "version_not_found", r.text
        assert store not in r.text and service.env["TMPDIR"] not in r.text, r.text


def test_a_connection_cap_over_the_descriptor_limit_stops_startup(store, keys) -> None:
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    env = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
    env |= {"APP_STORE": str(store.root), "APP_PUBLIC_KEY": str(keys[1]), "APP_PORT": "0", "APP_WORKERS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "app"],
        env={**env, "APP_MAX_CONNECTIONS": "1000"},
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=low_limit,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "APP_MAX_CONNECTIONS" in r.stderr and "256" in r.stderr and "Traceback" not in r.stderr
    # Not set: the default is lowered to fit, and the log says so.
    proc = subprocess.Popen(
        [sys.executable, "-m", "app"], env=env, stderr=subprocess.PIPE, text=True, preexec_fn=low_limit
    )
    assert proc.stderr is not None
    try:
        first = json.loads(proc.stderr.readline())
        assert first["logger"] == "app.edge.server" and "connections capped at" in first["message"], first
        assert "file-descriptor limit is 256" in first["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()
