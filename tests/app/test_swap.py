"""Zero-downtime swaps: clients keep predicting while versions are activated and rolled back."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from model_store.bundle import load_bundle
from model_store.predictor import Predictor
from tests.utils.factories import image_bytes
from tests.utils.server import LiveServer, admin

pytestmark = pytest.mark.slow  # real servers / subprocesses

CANDIDATES = [image_bytes(700 + i) for i in range(16)]


def test_swap_under_load_drops_nothing_and_never_mixes_versions(server: LiveServer, bundles, keys) -> None:
    tolerance = 1e-4
    both = {v: Predictor(load_bundle(bundles[v], keys[1])).predict(CANDIDATES) for v in ("v1", "v2")}
    # Only images the two versions score clearly apart can tell which version served them.
    keep = [i for i in range(len(CANDIDATES)) if abs(both["v1"][i].probability - both["v2"][i].probability) > 0.01]
    assert len(keep) >= 4
    images = [CANDIDATES[i] for i in keep]
    expected = {v: [both[v][i].probability for i in keep] for v in both}
    records: list[tuple[float, float, int, str | None, list[int], list[float]]] = []
    stop = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient, worker: int) -> None:
        i = 0
        while not stop.is_set():
            idx = [(worker + i + k) % len(images) for k in range(1 + worker % 3)]  # 1-3 images per request
            files = [("files", (f"{j}.jpg", images[j], "image/jpeg")) for j in idx]
            start = time.monotonic()
            r = await client.post("/v1/predict", files=files)
            body = r.json() if r.status_code == 200 else {}
            version = body.get("model", {}).get("version")
            probs = [x["probability"] for x in body.get("results", [])]
            records.append((start, time.monotonic(), r.status_code, version, idx, probs))
            i += 1

    async def scenario() -> float:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            workers = [asyncio.create_task(client_loop(client, w)) for w in range(6)]
            await asyncio.sleep(0.5)
            for path in ("/v1/models/v2/activate", "/v1/models/rollback", "/v1/models/v2/activate"):
                r = await client.post(path, headers=admin())
                assert r.status_code == 200, r.text
                await asyncio.sleep(0.4)
            final_swap_done = time.monotonic() - 0.4
            await asyncio.sleep(0.4)
            stop.set()
            await asyncio.gather(*workers)
            return final_swap_done

    final_swap_done = asyncio.run(scenario())
    assert len(records) > 30
    assert [r for r in records if r[2] != 200] == []  # zero failed requests
    versions = {r[3] for r in records}
    assert versions == {"v1", "v2"}
    for _, _, _, version, idx, probs in records:
        assert version is not None
        # every image in the response really came from the version the response names
        assert all(abs(p - expected[version][j]) <= tolerance for j, p in zip(idx, probs, strict=True))
    after = [r for r in records if r[0] > final_swap_done]
    assert after and all(r[3] == "v2" for r in after)


def test_starting_ending_and_promoting_a_canary_under_load_fails_no_request(server: LiveServer, bundles, keys) -> None:
    both = {v: Predictor(load_bundle(bundles[v], keys[1])).predict(CANDIDATES) for v in ("v1", "v2")}
    keep = [i for i in range(len(CANDIDATES)) if abs(both["v1"][i].probability - both["v2"][i].probability) > 0.01]
    assert len(keep) >= 4
    images = [CANDIDATES[i] for i in keep]
    expected = {v: [both[v][i].probability for i in keep] for v in both}
    stations = ["dock-1", "dock-2", None]  # the canary's station, another, and none named
    records: list[tuple[float, int, str | None, str | None, int, float | None]] = []
    stop = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient, worker: int) -> None:
        station, i = stations[worker % 3], 0
        while not stop.is_set():
            j = (worker + i) % len(images)
            headers = {"Content-Type": "image/jpeg", **({"X-Station-ID": station} if station else {})}
            start = time.monotonic()
            r = await client.post("/v1/predict", content=images[j], headers=headers)
            body = r.json() if r.status_code == 200 else {}
            prob = body["results"][0]["probability"] if body else None
            records.append((start, r.status_code, station, body.get("model", {}).get("version"), j, prob))
            i += 1

    async def scenario() -> dict[str, float]:
        moments: dict[str, float] = {}
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            workers = [asyncio.create_task(client_loop(client, w)) for w in range(6)]
            await asyncio.sleep(0.5)
            start = {"version": "v2", "stations": ["dock-1"]}
            for name, method, path, body in (
                ("start", "PUT", "/v1/canary", start),
                ("end", "DELETE", "/v1/canary", None),
                ("restart", "PUT", "/v1/canary", start),
                ("promote", "POST", "/v1/canary/promote", None),
            ):
                r = await client.request(method, path, json=body, headers=admin())
                assert r.status_code == 200, (name, r.text)
                moments[name] = time.monotonic()
                await asyncio.sleep(0.4)
            await asyncio.sleep(0.4)
            stop.set()
            await asyncio.gather(*workers)
        return moments

    moments = asyncio.run(scenario())
    assert len(records) > 30
    assert [r for r in records if r[1] != 200] == []  # zero failed requests
    for _, _, _, version, j, prob in records:
        assert version is not None and prob is not None
        assert abs(prob - expected[version][j]) <= 1e-4  # the answer came from the version it names
    # Before the promotion only the canary's station ever saw v2, and it did see it.
    before = [r for r in records if r[0] < moments["restart"]]
    assert {r[3] for r in before if r[2] != "dock-1"} == {"v1"}
    assert "v2" in {r[3] for r in records if r[2] == "dock-1" and moments["start"] < r[0] < moments["end"]}
    after = [r for r in records if r[0] > moments["promote"]]
    assert after and all(r[3] == "v2" for r in after)  # every station, once promoted
