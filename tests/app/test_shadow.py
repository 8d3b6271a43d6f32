"""Shadow evaluation over real HTTP: a candidate scores live images after each response,
the responses stay bit for bit the served version's, and the flips it reports are exactly
the images the two versions decide differently."""

from __future__ import annotations

import time

import httpx
import pytest

from model_store.bundle import load_bundle
from model_store.predictor import SERVING_THREADS, Predictor, torch_threads
from tests.utils.factories import image_bytes
from tests.utils.server import ADMIN_TOKEN, LiveServer, admin
from tests.utils.waiting import eventually

pytestmark = pytest.mark.slow

IMAGES = [image_bytes(900 + i, (110, 90)) for i in range(24)]


def test_a_shadow_reports_exactly_the_flips_and_never_changes_a_response(store, keys, bundles) -> None:
    with torch_threads(SERVING_THREADS):  # as the workers compute: alone, bit for bit
        served = [p for img in IMAGES for p in Predictor(load_bundle(bundles["v1"], keys[1])).predict([img])]
        shadow = [p for img in IMAGES for p in Predictor(load_bundle(bundles["v2"], keys[1])).predict([img])]
    to_positive = sum(a.decision == "intact" and b.decision == "damaged" for a, b in zip(served, shadow, strict=True))
    to_negative = sum(a.decision == "damaged" and b.decision == "intact" for a, b in zip(served, shadow, strict=True))
    assert to_positive + to_negative >= 2, "the fixture versions must disagree on some of these images"

    with LiveServer(store.root, keys[1], admin_token=ADMIN_TOKEN, follow_interval_s=0.1) as srv:
        srv.wait_ready()
        r = httpx.put(
            f"{srv.url}/v1/shadow",
            json={"version": "v2", "fraction": 1.0, "reason": "try"},
            headers=admin(),
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert (r.json()["action"], r.json()["to_version"]) == ("shadow", "v2")
        assert store.shadow() is not None and store.shadow().version == "v2"  # in the store: replicas follow

        for img, expected in zip(IMAGES, served, strict=True):
            got = httpx.post(f"{srv.url}/v1/predict", content=img, headers={"Content-Type": "image/jpeg"}).json()
            assert got["model"]["version"] == "v1"
            assert got["results"][0]["probability"] == expected.probability  # never changed by the shadow
            assert got["results"][0]["decision"] == expected.decision

        report = eventually(
            lambda: (
                (s := httpx.get(f"{srv.url}/v1/shadow", headers=admin()).json()["shadow"])["images"] == len(IMAGES)
                and s
            ),
            what="every image shadowed",
        )
        assert report["version"] == "v2" and report["against"] == "v1"
        assert report["flips"] == {"to_positive": to_positive, "to_negative": to_negative, "retake": 0}
        assert report["agreement"] == pytest.approx(1 - (to_positive + to_negative) / len(IMAGES))
        diffs = [abs(a.probability - b.probability) for a, b in zip(served, shadow, strict=True)]
        assert report["mean_abs_probability_diff"] == pytest.approx(sum(diffs) / len(diffs), abs=1e-12)
        assert report["latency_ms"]["p50"] > 0 and report["dropped"] == 0

        text = httpx.get(f"{srv.url}/metrics").text
        assert f'shadow_images_total{{version="v2"}} {len(IMAGES)}.0' in text
        assert f'shadow_flips_total{{direction="to_positive",version="v2"}} {to_positive}.0' in text

        store.set_shadow(None, actor="cli", reason="enough")  # the CLI or another replica turns it off
        eventually(lambda: httpx.get(f"{srv.url}/v1/shadow", headers=admin()).json()["shadow"] is None, what="off")
        before = time.monotonic()
        httpx.post(f"{srv.url}/v1/predict", content=IMAGES[0], headers={"Content-Type": "image/jpeg"})
        assert time.monotonic() - before < 30


def test_a_shadow_that_fails_parity_is_refused_and_nothing_changes(store, keys, bundles, tmp_path) -> None:
    from tests.utils.bundles import failing_parity_copy, snapshot

    store.import_bundle(failing_parity_copy(bundles["v2"], tmp_path / "v3", keys[0], "v3"), actor="t")
    with LiveServer(store.root, keys[1], admin_token=ADMIN_TOKEN) as srv:
        srv.wait_ready()
        before = snapshot(store.root)
        r = httpx.put(f"{srv.url}/v1/shadow", json={"version": "v3", "fraction": 0.5}, headers=admin(), timeout=60)
        assert r.status_code == 409 and r.json()["error"] == "parity_failed"
        assert snapshot(store.root) == before
        assert httpx.get(f"{srv.url}/v1/shadow", headers=admin()).json()["shadow"] is None
