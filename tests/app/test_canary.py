"""Station canaries over real HTTP: the canary's stations are answered by the canary version
(in /v1 and /v2, each answer naming it), every other station and requests naming none by
the active one; the active version scores the canary's images after each answer, and the
comparison counts exactly the images the two decide differently; ending, promoting and the
refusals through the management API."""

from __future__ import annotations

import json

import httpx
import pytest

from model_store.bundle import load_bundle
from model_store.predictor import SERVING_THREADS, Predictor, torch_threads
from model_store.rollout import station_share
from tests.utils.factories import image_bytes
from tests.utils.hostile import oip_body
from tests.utils.server import ADMIN_TOKEN, LiveServer, admin
from tests.utils.waiting import eventually

pytestmark = pytest.mark.slow

IMAGES = [image_bytes(900 + i, (110, 90)) for i in range(12)]


def _predict(srv: LiveServer, image: bytes, station: str | None) -> dict[str, object]:
    headers = {"Content-Type": "image/jpeg", **({"X-Station-ID": station} if station else {})}
    r = httpx.post(f"{srv.url}/v1/predict", content=image, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def _v2(srv: LiveServer, model: str, image: bytes, station: str) -> dict[str, object]:
    body, header_length = oip_body([image])
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(header_length),
        "X-Station-ID": station,
    }
    r = httpx.post(f"{srv.url}/v2/models/{model}/infer", content=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    answer: dict[str, object] = json.loads(r.content)  # JSON outputs: the whole body is the header
    return answer


def test_the_canary_answers_its_stations_and_is_compared_with_the_active_version(store, keys, bundles) -> None:
    with torch_threads(SERVING_THREADS):  # as the workers compute: alone, bit for bit
        active = [p for img in IMAGES for p in Predictor(load_bundle(bundles["v1"], keys[1])).predict([img])]
        canary = [p for img in IMAGES for p in Predictor(load_bundle(bundles["v2"], keys[1])).predict([img])]
    to_positive = sum(a.decision == "intact" and c.decision == "damaged" for a, c in zip(active, canary, strict=True))
    to_negative = sum(a.decision == "damaged" and c.decision == "intact" for a, c in zip(active, canary, strict=True))
    assert to_positive + to_negative >= 1, "the fixture versions must disagree on some of these images"

    with LiveServer(store.root, keys[1], admin_token=ADMIN_TOKEN, follow_interval_s=0.1) as srv:
        srv.wait_ready()
        assert httpx.get(f"{srv.url}/v1/canary", headers=admin()).json()["canary"] is None
        r = httpx.put(
            f"{srv.url}/v1/canary",
            json={"version": "v2", "stations": ["dock-1"], "reason": "try on one dock"},
            headers=admin(),
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert (r.json()["action"], r.json()["to_version"]) == ("canary", "v2")
        assert (c := store.canary()) is not None and c.stations == ("dock-1",)  # in the store: replicas follow

        for i, img in enumerate(IMAGES):
            got = _predict(srv, img, "dock-1")
            assert got["model"]["version"] == "v2"  # type: ignore[index]
            assert got["results"][0]["probability"] == canary[i].probability  # type: ignore[index]
            other = _predict(srv, img, "dock-2")
            assert other["model"]["version"] == "v1"  # type: ignore[index]
            assert other["results"][0]["probability"] == active[i].probability  # type: ignore[index]
        assert _predict(srv, IMAGES[0], None)["model"]["version"] == "v1"  # type: ignore[index]
        model = _predict(srv, IMAGES[0], None)["model"]["name"]  # type: ignore[index]
        assert _v2(srv, model, IMAGES[0], "dock-1")["parameters"]["version"] == "v2"  # type: ignore[index]
        assert _v2(srv, model, IMAGES[0], "dock-2")["parameters"]["version"] == "v1"  # type: ignore[index]

        report = eventually(
            lambda: (
                (s := httpx.get(f"{srv.url}/v1/canary", headers=admin()).json())["comparisons"]
                and s["comparisons"][0]["images"] == len(IMAGES) + 1
                and s
            ),
            what="every canary image compared",
        )
        assert report["active"] == "v1" and report["canary"]["version"] == "v2"
        assert report["canary"]["stations"] == ["dock-1"] and report["refused"] is None
        (row,) = report["comparisons"]  # only the canary's station
        assert (row["version"], row["against"], row["station"]) == ("v2", "v1", "dock-1")
        # The /v2 image was IMAGES[0] again: count its decision once more.
        first_flip = active[0].decision != canary[0].decision
        assert row["to_positive"] + row["to_negative"] == to_positive + to_negative + first_flip
        assert row["agree"] == len(IMAGES) + 1 - (to_positive + to_negative + first_flip)
        assert (row["dropped"], row["failed"], row["retake"]) == (0, 0, 0)

        # A fraction of stations, by the stable hash of the ID.
        r = httpx.put(f"{srv.url}/v1/canary", json={"version": "v2", "fraction": 0.5}, headers=admin(), timeout=60)
        assert r.status_code == 200, r.text
        stations = [f"st-{i}" for i in range(12)]
        assert {station_share(s) < 0.5 for s in stations} == {True, False}
        for s in stations:
            want = "v2" if station_share(s) < 0.5 else "v1"
            assert _predict(srv, IMAGES[1], s)["model"]["version"] == want, s  # type: ignore[index]
        assert httpx.get(f"{srv.url}/v1/canary", headers=admin()).json()["canary"]["fraction"] == 0.5

        r = httpx.request("DELETE", f"{srv.url}/v1/canary", headers=admin(), json={"reason": "enough"})
        assert r.status_code == 200 and (r.json()["from_version"], r.json()["to_version"]) == ("v2", None)
        assert _predict(srv, IMAGES[0], "dock-1")["model"]["version"] == "v1"  # type: ignore[index]
        assert httpx.get(f"{srv.url}/v1/canary", headers=admin()).json()["canary"] is None

        r = httpx.delete(f"{srv.url}/v1/canary", headers=admin())
        assert r.status_code == 409 and r.json()["error"] == "canary_conflict"
        r = httpx.post(f"{srv.url}/v1/canary/promote", headers=admin())
        assert r.status_code == 409 and "there is no canary" in r.json()["message"]

        # Promotion: the canary becomes the active version for every station.
        httpx.put(f"{srv.url}/v1/canary", json={"version": "v2", "stations": ["dock-1"]}, headers=admin(), timeout=60)
        r = httpx.post(f"{srv.url}/v1/canary/promote", headers=admin(), json={"reason": "good"}, timeout=60)
        assert r.status_code == 200, r.text
        assert (r.json()["action"], r.json()["from_version"], r.json()["to_version"]) == ("promote", "v1", "v2")
        assert store.active_version() == "v2" and store.canary() is None
        for station in ("dock-1", "dock-2", None):
            assert _predict(srv, IMAGES[0], station)["model"]["version"] == "v2"  # type: ignore[index]
        audit = httpx.get(f"{srv.url}/v1/audit", headers=admin()).json()
        assert [e["action"] for e in audit][-5:] == ["canary", "canary", "canary", "canary", "promote"]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"version": "v1", "stations": ["a"]}, 409, "canary_conflict"),  # the active version
        ({"version": "v2"}, 422, "invalid_request"),  # neither stations nor fraction (the schema says so)
        ({"version": "v2", "stations": ["a"], "fraction": 0.5}, 422, "invalid_request"),  # both
        ({"version": "v2", "stations": []}, 422, "invalid_request"),
        ({"version": "v2", "stations": ["dock 1"]}, 422, "invalid_request"),
        ({"version": "v2", "fraction": 2}, 422, "invalid_request"),
        ({"version": "v7", "stations": ["a"]}, 404, "version_not_found"),
    ],
)
def test_invalid_canaries_are_refused_with_a_json_error(server, store, body, status, error) -> None:
    before = store.pointer_stamp()
    r = httpx.put(f"{server.url}/v1/canary", json=body, headers=admin(), timeout=60)
    assert (r.status_code, r.json()["error"]) == (status, error), r.text
    assert store.pointer_stamp() == before and store.canary() is None


def test_a_canary_that_fails_parity_is_refused_and_nothing_changes(store, keys, bundles, tmp_path) -> None:
    from tests.utils.bundles import failing_parity_copy, snapshot

    store.import_bundle(failing_parity_copy(bundles["v2"], tmp_path / "v3", keys[0], "v3"), actor="t")
    with LiveServer(store.root, keys[1], admin_token=ADMIN_TOKEN) as srv:
        srv.wait_ready()
        before = snapshot(store.root)
        r = httpx.put(f"{srv.url}/v1/canary", json={"version": "v3", "stations": ["a"]}, headers=admin(), timeout=60)
        assert r.status_code == 409 and r.json()["error"] == "parity_failed"
        assert snapshot(store.root) == before
        assert _predict(srv, IMAGES[0], "a")["model"]["version"] == "v1"  # type: ignore[index]
