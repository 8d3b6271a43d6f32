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
