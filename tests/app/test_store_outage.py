"""A hung S3 under a running service (`python -m app`, real S3 server behind a proxy that stops
answering): management calls answer 503 in bounded time instead of hanging for a minute,
/readyz stays ready but says the store is unhealthy, and a killed inference worker is started
again while the store hangs."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import boto3
import httpx
import psutil
import pytest

from model_store import activation
from model_store.store import open_store
from tests.utils.factories import image_bytes
from tests.utils.s3 import StallingProxy, client_env
from tests.utils.server import ADMIN_TOKEN, ServiceProcess, admin
from tests.utils.stores import BUCKET
from tests.utils.waiting import eventually

pytestmark = pytest.mark.slow

# Well under boto's defaults (60 s read timeout, retried), which held these calls 66-68 s.
BOUND_S = 40.0


def _workers(service: ServiceProcess) -> list[psutil.Process]:
    """The inference workers: children of the forkserver, itself a child of the front."""
    assert service.proc is not None
    return [w for child in psutil.Process(service.proc.pid).children() for w in child.children()]


def test_a_hung_store_is_reported_and_never_starves_the_service(s3_server: str, bundles, keys, tmp_path: Path) -> None:
    prefix = f"hung-{tmp_path.name}"
    store = open_store(f"s3://{BUCKET}/{prefix}", keys[1], cache_dir=tmp_path / "cache-test")
    store.init()
    store.import_bundle(bundles["v1"], actor="test")
    activation.activate(store, "v1", actor="test")

    with StallingProxy(s3_server) as proxy:
        env = {
            "APP_STORE": f"s3://{BUCKET}/{prefix}",
            "APP_PUBLIC_KEY": str(keys[1]),
            "APP_ADMIN_TOKEN": ADMIN_TOKEN,
            "APP_WORKERS": "1",
            "APP_FOLLOW_INTERVAL_S": "0.5",
            "APP_CAPTURE_FRACTION": "1",  # captured beside the store, in the same S3
            "XDG_CACHE_HOME": str(tmp_path / "cache-service"),
            **client_env(proxy.url),
        }
        with ServiceProcess(env, tmp_path / "service.log") as service:
            assert service.wait_ready()["version"] == "v1"
            jpeg = {"Content-Type": "image/jpeg"}
            request_id = httpx.post(f"{service.url}/v1/predict", content=image_bytes(1), headers=jpeg).json()[
                "request_id"
            ]
            s3 = boto3.client("s3")  # straight to the S3 server, not through the proxy
            eventually(
                lambda: s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/capture/requests/{request_id}/").get(
                    "KeyCount"
                ),
                what="the request captured",
            )

            proxy.stall()

            async def management_calls() -> dict[str, tuple[httpx.Response, float]]:
                async with httpx.AsyncClient(base_url=service.url, headers=admin(), timeout=BOUND_S) as c:

                    async def timed(
                        name: str, method: str, path: str, **kw: object
                    ) -> tuple[str, httpx.Response, float]:
                        started = time.monotonic()
                        r = await c.request(method, path, **kw)  # type: ignore[arg-type]
                        return name, r, time.monotonic() - started

                    done = await asyncio.gather(
                        timed("models", "GET", "/v1/models"),
                        timed("audit", "GET", "/v1/audit"),
                        timed("monitoring", "GET", "/v1/monitoring"),
                        timed(
                            "feedback", "POST", "/v1/feedback", json={"request_id": request_id, "labels": ["damaged"]}
                        ),
                    )
                return {name: (r, elapsed) for name, r, elapsed in done}

            answers = asyncio.run(management_calls())
            for name, (r, elapsed) in answers.items():
                print(f"hung S3: {name} answered {r.status_code} after {elapsed:.1f}s")
                assert r.status_code == 503, (name, r.text)
                assert r.headers["retry-after"] and r.json()["error"] in ("store_error", "capture_error"), name

            # Still ready (it serves a proven model), and it says the store is not healthy.
            def unhealthy_store() -> httpx.Response | None:
                r = httpx.get(f"{service.url}/readyz", timeout=10)
                return r if r.json()["store"]["healthy"] is False else None

            ready = eventually(unhealthy_store, timeout=BOUND_S, what="/readyz to report the hung store")
            body = ready.json()
            assert ready.status_code == 200 and body["version"] == "v1", body
            assert body["store"]["consecutive_failures"] >= 1 and body["store"]["since"] and body["store"]["error"]
            metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
            assert "store_follow_healthy 0.0" in metrics

            # Many management calls queue behind the hung store; the threads that start and
            # join inference workers must stay free: a killed worker comes back meanwhile.
            async def pile_up_and_kill_a_worker() -> tuple[httpx.Response, float]:
                async with httpx.AsyncClient(base_url=service.url, headers=admin(), timeout=120) as c:
                    pile = [asyncio.create_task(c.get("/v1/models")) for _ in range(40)]
                    await asyncio.sleep(2)
                    [worker] = _workers(service)
                    os.kill(worker.pid, signal.SIGKILL)
                    started = time.monotonic()
                    while True:  # a predict waits for the worker's restart, or fails fast
                        r = await c.post("/v1/predict", content=image_bytes(2), headers=jpeg)
                        back_after = time.monotonic() - started
                        if r.status_code == 200 or back_after > 120:
                            break
                        await asyncio.sleep(0.2)
                    print(f"hung S3: worker back, predict {r.status_code} after {back_after:.1f}s")
                    proxy.resume()  # let the pile drain
                    await asyncio.gather(*pile, return_exceptions=True)
                    return r, back_after

            r, back_after = asyncio.run(pile_up_and_kill_a_worker())
            assert r.status_code == 200, r.text
            # With store calls on asyncio's default threads, the restart waited for the pile
            # (about a minute here, for as long as the store hung in production).
            assert back_after < 30, f"the killed worker came back only after {back_after:.0f}s"
            assert "worker_restarts_total 1.0" in httpx.get(f"{service.url}/metrics", timeout=10).text

            eventually(
                lambda: httpx.get(f"{service.url}/readyz", timeout=10).json()["store"]["healthy"],
                timeout=60,
                what="the store healthy again",
            )
