"""Two service processes share one S3 store: an activation through one replica's API is
served by both within the follow interval, with zero failed requests on either."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from model_store import activation
from model_store.store import open_store
from tests.utils.factories import image_bytes
from tests.utils.server import ADMIN_TOKEN, ServiceProcess, admin
from tests.utils.stores import BUCKET

pytestmark = pytest.mark.slow

FOLLOW_S = 0.5


def test_an_activation_through_one_replica_reaches_both_with_no_failed_request(
    s3_server: str, bundles, keys, tmp_path: Path
) -> None:
    location = f"s3://{BUCKET}/replicas-{tmp_path.name}"
    store = open_store(location, keys[1], cache_dir=tmp_path / "cache-test")
    store.init()
    for v in ("v1", "v2"):
        store.import_bundle(bundles[v], actor="test")
    activation.activate(store, "v1", actor="test")

    def env(name: str) -> dict[str, str]:
        return {
            "APP_STORE": location,
            "APP_PUBLIC_KEY": str(keys[1]),
            "APP_ADMIN_TOKEN": ADMIN_TOKEN,
            "APP_WORKERS": "1",
            "APP_FOLLOW_INTERVAL_S": str(FOLLOW_S),
            "XDG_CACHE_HOME": str(tmp_path / f"cache-{name}"),  # each replica verifies its own copy
        }

    image = image_bytes(77)
    records: list[tuple[str, float, int, str | None]] = []
    stop = asyncio.Event()

    async def client(name: str, url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            while not stop.is_set():
                r = await c.post("/v1/predict", content=image, headers={"Content-Type": "image/jpeg"})
                version = r.json().get("model", {}).get("version") if r.status_code == 200 else None
                records.append((name, time.monotonic(), r.status_code, version))

    async def until_both_serve(urls: dict[str, str], version: str, timeout: float) -> dict[str, float]:
        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=10) as c:
            while len(seen) < len(urls) and time.monotonic() < deadline:
                for name, url in urls.items():
                    if name not in seen and (await c.get(f"{url}/readyz")).json().get("version") == version:
                        seen[name] = time.monotonic()
                await asyncio.sleep(0.05)
        return seen

    with (
        ServiceProcess(env("a"), tmp_path / "a.log") as a,
        ServiceProcess(env("b"), tmp_path / "b.log") as b,
    ):
        assert a.wait_ready()["version"] == b.wait_ready()["version"] == "v1"
        urls = {"a": a.url, "b": b.url}

        async def scenario() -> tuple[float, dict[str, float]]:
            loads = [asyncio.create_task(client(n, u)) for n, u in urls.items() for _ in range(2)]
            await asyncio.sleep(1.0)
            async with httpx.AsyncClient(timeout=120) as c:
                r = await c.post(f"{a.url}/v1/models/v2/activate", headers=admin(), json={"reason": "replicas test"})
            assert r.status_code == 200, r.text
            activated = time.monotonic()
            seen = await until_both_serve(urls, "v2", timeout=30)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*loads)
            return activated, seen

        activated, seen = asyncio.run(scenario())

    assert set(seen) == {"a", "b"}, "both replicas serve the new version"
    follow_delay = seen["b"] - activated
    # The follower notices within one interval, then verifies, loads and proves the bundle
    # (a second or two on a busy 2-core machine) before it serves it.
    assert follow_delay < FOLLOW_S + 15, follow_delay
    assert records and [r for r in records if r[2] != 200] == []  # zero failed requests on either
    for name in ("a", "b"):
        mine = [r for r in records if r[0] == name]
        assert {r[3] for r in mine} == {"v1", "v2"}, name  # it served under load before and after
        assert all(r[3] == "v2" for r in mine if r[1] > seen[name] + 0.5), name  # and only v2 once swapped
    assert store.active_version() == "v2"
    assert store.audit_log()[-1].to_version == "v2"


def test_a_canary_started_ended_and_promoted_through_either_replica_fails_no_request(
    s3_server: str, bundles, keys, tmp_path: Path
) -> None:
    location = f"s3://{BUCKET}/canary-{tmp_path.name}"
    store = open_store(location, keys[1], cache_dir=tmp_path / "cache-test")
    store.init()
    for v in ("v1", "v2"):
        store.import_bundle(bundles[v], actor="test")
    activation.activate(store, "v1", actor="test")

    def env(name: str) -> dict[str, str]:
        return {
            "APP_STORE": location,
            "APP_PUBLIC_KEY": str(keys[1]),
            "APP_ADMIN_TOKEN": ADMIN_TOKEN,
            "APP_WORKERS": "1",
            "APP_FOLLOW_INTERVAL_S": str(FOLLOW_S),
            "XDG_CACHE_HOME": str(tmp_path / f"cache-{name}"),
        }

    image = image_bytes(77)
    records: list[tuple[str, str, float, int, str | None]] = []
    stop = asyncio.Event()

    async def client(name: str, url: str, station: str) -> None:
        headers = {"Content-Type": "image/jpeg", "X-Station-ID": station}
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            while not stop.is_set():
                start = time.monotonic()  # the version is pinned on arrival
                r = await c.post("/v1/predict", content=image, headers=headers)
                version = r.json().get("model", {}).get("version") if r.status_code == 200 else None
                records.append((name, station, start, r.status_code, version))

    async def until_both(urls: dict[str, str], canary: str | None, active: str) -> None:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=10, headers=admin()) as c:
            while time.monotonic() < deadline:
                states = [(await c.get(f"{u}/v1/canary")).json() for u in urls.values()]
                if all(
                    s["active"] == active and (s["canary"] or {}).get("version") == canary for s in states
                ):  # fmt: skip
                    return
                await asyncio.sleep(0.05)
        raise AssertionError(f"the replicas did not follow: canary {canary}, active {active}")

    with (
        ServiceProcess(env("a"), tmp_path / "a.log") as a,
        ServiceProcess(env("b"), tmp_path / "b.log") as b,
    ):
        assert a.wait_ready()["version"] == b.wait_ready()["version"] == "v1"
        urls = {"a": a.url, "b": b.url}

        async def scenario() -> dict[str, float]:
            loads = [asyncio.create_task(client(n, u, s)) for n, u in urls.items() for s in ("dock-1", "dock-2")]
            moments: dict[str, float] = {}
            await asyncio.sleep(1.0)
            async with httpx.AsyncClient(timeout=120, headers=admin()) as c:
                r = await c.put(f"{a.url}/v1/canary", json={"version": "v2", "stations": ["dock-1"]})
                assert r.status_code == 200, r.text
                await until_both(urls, "v2", "v1")
                moments["canary"] = time.monotonic()
                await asyncio.sleep(0.5)
                r = await c.request("DELETE", f"{b.url}/v1/canary", json={"reason": "through the other one"})
                assert r.status_code == 200, r.text
                await until_both(urls, None, "v1")
                moments["ended"] = time.monotonic()
                await asyncio.sleep(0.5)
                r = await c.put(f"{b.url}/v1/canary", json={"version": "v2", "stations": ["dock-1"]})
                assert r.status_code == 200, r.text
                await until_both(urls, "v2", "v1")
                r = await c.post(f"{a.url}/v1/canary/promote", json={"reason": "good"})
                assert r.status_code == 200, r.text
                await until_both(urls, None, "v2")
                moments["promoted"] = time.monotonic()
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*loads)
            return moments

        moments = asyncio.run(scenario())

    assert records and [r for r in records if r[3] != 200] == []  # zero failed requests on either
    for name in ("a", "b"):
        mine = [r for r in records if r[0] == name]
        canary_window = [r for r in mine if moments["canary"] + 0.1 < r[2] < moments["canary"] + 0.5]
        assert {r[4] for r in canary_window if r[1] == "dock-1"} == {"v2"}, name  # the canary's station
        assert {r[4] for r in mine if r[1] == "dock-2" and r[2] < moments["ended"]} == {"v1"}, name
        assert all(r[4] == "v2" for r in mine if r[2] > moments["promoted"] + 0.1), name
    assert store.active_version() == "v2" and store.canary() is None
    assert [e.action for e in store.audit_log()][-4:] == ["canary", "canary", "canary", "promote"]
