"""Soak: a bounded run of mixed traffic (single and multipart, good and bad images) while
versions are activated and rolled back through the API and the store's pointer is moved
behind the service's back. No good request fails, memory stays within a bound, and the
service's /metrics counts exactly what the clients saw."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model_store import activation
from model_store.store import FilesystemStore
from tests.utils.factories import image_bytes
from tests.utils.memory import MIB, PeakRss, settled_rss
from tests.utils.server import ADMIN_TOKEN, ServiceProcess, admin

pytestmark = pytest.mark.slow

SOAK_S = 30.0  # wall time of the traffic; the whole test takes about twice that
RSS_GROWTH_BOUND_MIB = 150  # idle after the soak vs idle before it: a leak per request or swap shows here
PREDICT = "/v1/predict"
ACTIVATE = "/v1/models/{version}/activate"
ROLLBACK = "/v1/models/rollback"


def _requests_total(metrics: str) -> Counter[tuple[str, str, str]]:
    counts: Counter[tuple[str, str, str]] = Counter()
    for family in text_string_to_metric_families(metrics):
        if family.name == "http_requests":
            for s in family.samples:
                if s.name == "http_requests_total":
                    counts[s.labels["route"], s.labels["method"], s.labels["status"]] = int(s.value)
    return counts


def _images_total(metrics: str) -> int:
    return sum(
        int(s.value)
        for family in text_string_to_metric_families(metrics)
        if family.name == "predicted_images"
        for s in family.samples
        if s.name == "predicted_images_total"
    )


def test_soak_mixed_traffic_with_swaps(store: FilesystemStore, keys, tmp_path: Path) -> None:
    env = {
        "APP_STORE": str(store.root),
        "APP_PUBLIC_KEY": str(keys[1]),
        "APP_ADMIN_TOKEN": ADMIN_TOKEN,
        "APP_WORKERS": "1",
        "APP_FOLLOW_INTERVAL_S": "0.2",
        "TMPDIR": str(tmp_path),
    }
    goods = [image_bytes(300 + i, (120 + 8 * i, 90)) for i in range(8)]
    bads = [b"not an image at all", goods[0][: len(goods[0]) // 3], b"GIF89a" + bytes(64)]
    seen: Counter[tuple[str, str, str]] = Counter()  # (route, method, status), as /metrics labels them
    good_failures: list[str] = []
    good_images = 0
    swaps = Counter[str]()
    versions_served: Counter[str] = Counter()

    with ServiceProcess(env, tmp_path / "service.log") as service:
        service.wait_ready()
        assert service.proc is not None
        pid = service.proc.pid

        async def soak() -> None:
            nonlocal good_images
            deadline = time.monotonic() + SOAK_S

            async def good_single(c: httpx.AsyncClient, i: int) -> None:
                nonlocal good_images
                while time.monotonic() < deadline:
                    r = await c.post(PREDICT, content=goods[i % 8], headers={"Content-Type": "image/jpeg"})
                    seen[PREDICT, "POST", str(r.status_code)] += 1
                    i += 1
                    if r.status_code != 200:
                        good_failures.append(f"single: {r.status_code} {r.text[:200]}")
                        continue
                    good_images += 1
                    versions_served[r.json()["model"]["version"]] += 1

            async def good_multi(c: httpx.AsyncClient) -> None:
                nonlocal good_images
                n = 0
                while time.monotonic() < deadline:
                    batch = [("files", (f"{k}.jpg", goods[(n + k) % 8], "image/jpeg")) for k in range(1 + n % 4)]
                    r = await c.post(PREDICT, files=batch)
                    seen[PREDICT, "POST", str(r.status_code)] += 1
                    n += 1
                    if r.status_code != 200 or len(r.json()["results"]) != len(batch):
                        good_failures.append(f"multipart: {r.status_code} {r.text[:200]}")
                        continue
                    good_images += len(batch)

            async def bad(c: httpx.AsyncClient) -> None:
                n = 0
                while time.monotonic() < deadline:
                    if n % 2:
                        r = await c.post(PREDICT, content=bads[n % 3], headers={"Content-Type": "image/jpeg"})
                    else:
                        r = await c.post(
                            PREDICT, files=[("files", ("a.jpg", goods[0])), ("files", ("b.jpg", bads[n % 3]))]
                        )
                    seen[PREDICT, "POST", str(r.status_code)] += 1
                    assert r.status_code == 422, r.text  # bad input is refused, never a 5xx
                    n += 1
                    await asyncio.sleep(0.02)

            async def operator(c: httpx.AsyncClient) -> None:
                while time.monotonic() < deadline - 3:
                    # Through the API: activate v2, roll back to v1.
                    r = await c.post("/v1/models/v2/activate", headers=admin(), json={"reason": "soak"})
                    seen[ACTIVATE, "POST", str(r.status_code)] += 1
                    assert r.status_code == 200, r.text
                    swaps["api activate"] += 1
                    r = await c.post(ROLLBACK, headers=admin(), json={"reason": "soak"})
                    seen[ROLLBACK, "POST", str(r.status_code)] += 1
                    assert r.status_code == 200 and r.json()["active"] == "v1", r.text
                    swaps["api rollback"] += 1
                    # Behind the service's back, as the CLI or another replica would: it follows.
                    other = FilesystemStore(store.root, keys[1])
                    await asyncio.to_thread(activation.activate, other, "v2", actor="soak-cli")
                    swaps["store pointer"] += 1
                    for _ in range(100):  # bounded: the follow interval is 0.2 s
                        if (await c.get("/readyz")).json().get("version") == "v2":
                            break
                        await asyncio.sleep(0.1)
                    else:
                        raise AssertionError("the service did not follow the store to v2")
                    await asyncio.to_thread(activation.activate, other, "v1", actor="soak-cli")
                    swaps["store pointer"] += 1
                    await asyncio.sleep(0.5)

            async with httpx.AsyncClient(base_url=service.url, timeout=60) as c:
                await asyncio.gather(good_single(c, 0), good_single(c, 4), good_multi(c), bad(c), operator(c))

        for _ in range(3):  # warm-up, not counted by the client, so subtract it from /metrics below
            assert (
                httpx.post(
                    f"{service.url}{PREDICT}", content=goods[0], headers={"Content-Type": "image/jpeg"}
                ).status_code
                == 200
            )
        before_metrics = httpx.get(f"{service.url}/metrics").text
        idle_before = settled_rss(pid)
        started = time.monotonic()
        with PeakRss(pid, every=0.1) as peak:
            asyncio.run(soak())
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # the follow loop may still be swapping back to v1
        idle_after = settled_rss(pid)
        after_metrics = httpx.get(f"{service.url}/metrics").text

    counted = _requests_total(after_metrics)
    counted.subtract(_requests_total(before_metrics))
    growth = (idle_after - idle_before) / MIB
    requests = sum(seen.values())
    print(
        f"\nsoak: {elapsed:.0f} s, {requests} requests ({requests / elapsed:.0f}/s), {good_images} good images "
        f"({dict(versions_served)} single answers by version), swaps {dict(swaps)}\n"
        f"  statuses {dict(sorted(seen.items()))}\n"
        f"  RSS idle before {idle_before / MIB:.0f} MiB, after {idle_after / MIB:.0f} MiB ({growth:+.0f} MiB, "
        f"bound +{RSS_GROWTH_BOUND_MIB}), peak {peak.max / MIB:.0f} MiB"
    )
    assert not good_failures, good_failures[:10]
    assert swaps["api activate"] >= 2 and swaps["store pointer"] >= 2
    assert set(versions_served) == {"v1", "v2"}  # both really served during the soak
    for key, n in seen.items():
        assert counted[key] == n, f"/metrics counts {counted[key]} for {key}, the clients saw {n}"
    assert _images_total(after_metrics) - _images_total(before_metrics) == good_images
    assert growth <= RSS_GROWTH_BOUND_MIB
