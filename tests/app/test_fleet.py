"""Monitoring the fleet, not one replica, over real HTTP: replicas that share a store write
their drift windows to it, and any replica's `/v1/monitoring` shows every station of
every replica (image counts merged, each replica's freshness listed), after a restart
too; a failing camera keeps its alarm across a version swap; a broken summary object in
the store is named, never a 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from model_store import activation
from model_store import monitoring as mon
from model_store.store import FilesystemStore
from tests.utils.factories import make_monitored_bundle, parcel_photo
from tests.utils.server import ADMIN_TOKEN, LiveServer, admin
from tests.utils.waiting import eventually

pytestmark = pytest.mark.slow

INTERVAL_S = 0.2  # summaries written this often, so a test waits a fraction of a second
REFERENCE = [parcel_photo(seed) for seed in range(40)]


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory, keys) -> dict[str, Path]:
    """m1 and m2, each with a monitoring reference (so image features are judged after a swap)."""
    root = tmp_path_factory.mktemp("fleet-bundles")
    return {v: make_monitored_bundle(root / v, keys[0], v, REFERENCE).path for v in ("m1", "m2")}


@pytest.fixture
def store(tmp_path: Path, keys, monitored: dict[str, Path]) -> FilesystemStore:
    s = FilesystemStore(tmp_path / "store", keys[1])
    for v in ("m1", "m2"):
        s.import_bundle(monitored[v], actor="t")
    activation.activate(s, "m1", actor="t")
    return s


def _replica(store: FilesystemStore, keys, name: str, **overrides: Any) -> LiveServer:
    values: dict[str, Any] = {
        "admin_token": ADMIN_TOKEN, "workers": 1, "replica_id": name, "summary_interval_s": INTERVAL_S,
    }  # fmt: skip
    return LiveServer(store.root, keys[1], **{**values, **overrides})


def _send(url: str, station: str, images: list[bytes]) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        for img in images:
            r = c.post("/v1/predict", content=img, headers={"Content-Type": "image/jpeg", "X-Station-ID": station})
            assert r.status_code == 200, r.text


def _monitoring(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/v1/monitoring", headers=admin(), timeout=60)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _images(body: dict[str, Any]) -> dict[str, int]:
    return {s["station"]: s["images"] for s in body["stations"]}


def _until(url: str, images: dict[str, int], what: str) -> dict[str, Any]:
    """`/v1/monitoring` once its stations' image counts are `images` (summaries take an interval)."""

    def probe() -> dict[str, Any] | None:
        body = _monitoring(url)
        return body if _images(body) == images else None

    return eventually(probe, what=what)


def test_either_replica_shows_every_station_of_the_fleet_with_merged_counts_and_after_a_restart(
    store: FilesystemStore, keys
) -> None:
    with _replica(store, keys, "replica-a") as a, _replica(store, keys, "replica-b") as b:
        a.wait_ready()
        b.wait_ready()
        _send(a.url, "dock-1", [parcel_photo(100 + i) for i in range(6)])
        _send(b.url, "dock-2", [parcel_photo(200 + i) for i in range(4)])
        _send(b.url, "dock-1", [parcel_photo(300 + i) for i in range(3)])  # the balancer sent some of dock-1 to b
        want = {"dock-1": 9, "dock-2": 4}
        for srv, other in ((a, "replica-b"), (b, "replica-a")):
            body = _until(srv.url, want, f"{srv.url} to show the fleet's stations")
            assert body["fleet"] is True and body["skipped"] == []
            listed = {r["replica"]: r for r in body["replicas"]}
            assert set(listed) == {"replica-a", "replica-b"}
            assert listed[other]["stale"] is False and listed[other]["age_s"] < 30
            assert listed[other]["served"] == "m1" and listed[other]["windows"] >= 2
            assert next(r for r in body["replicas"] if r["this"])["replica"] == body["replica"] != other
        dock_2 = next(s for s in _monitoring(a.url)["stations"] if s["station"] == "dock-2")
        assert dock_2["window"] == dock_2["image_window"] == 4  # through a, from b's summary alone
    # Both stopped (each wrote its last summary). a comes back under its own ID alone: what
    # it had is in its windows again, b's from b's summary (still fresh).
    with _replica(store, keys, "replica-a") as a:
        a.wait_ready()
        _until(a.url, {"dock-1": 9, "dock-2": 4}, "the restarted replica to show its windows")
        _send(a.url, "dock-1", [parcel_photo(400)])
        assert _images(_monitoring(a.url))["dock-1"] == 10  # seeded, then live: one window, not two


def test_a_restarted_replica_keeps_its_own_windows_without_the_fleet_view(store: FilesystemStore, keys) -> None:
    """Its own summary is not merged (its live windows stand for it): the windows come back only
    by seeding them, which is what this checks."""
    with _replica(store, keys, "solo") as srv:
        srv.wait_ready()
        _send(srv.url, "dock-5", [parcel_photo(500 + i) for i in range(5)])
    with _replica(store, keys, "solo") as srv:
        srv.wait_ready()
        body = _until(srv.url, {"dock-5": 5}, "the windows from before the restart")
        assert body["fleet"] is False and [r["replica"] for r in body["replicas"]] == ["solo"]
    with _replica(store, keys, "another-one") as srv:  # a new replica ID starts empty... but sees solo's
        srv.wait_ready()
        body = _monitoring(srv.url)
        assert body["fleet"] is True and _images(body) == {"dock-5": 5}


def test_a_failing_camera_keeps_its_alarm_right_after_another_version_is_activated(
    store: FilesystemStore, keys
) -> None:
    with _replica(store, keys, "swapper") as srv:
        srv.wait_ready()
        _send(srv.url, "dock-dark", [parcel_photo(600 + i, brightness=0.45) for i in range(mon.MIN_IMAGES)])
        before = next(s for s in _monitoring(srv.url)["stations"] if s["station"] == "dock-dark")
        assert "brightness" in before["alarms"]
        r = httpx.post(f"{srv.url}/v1/models/m2/activate", headers=admin(), json={"reason": "swap"}, timeout=120)
        assert r.status_code == 200, r.text
        body = _monitoring(srv.url)
        after = next(s for s in body["stations"] if s["station"] == "dock-dark")
        assert body["version"] == after["version"] == "m2"
        assert after["alarm"] is True and "brightness" in after["alarms"], after["drift"]
        assert after["image_window"] == mon.MIN_IMAGES  # the camera's images, whatever the model
        assert after["window"] == 0 and after["estimate"] is None  # m2 has judged nothing here yet


def test_a_malformed_summary_in_the_store_is_named_and_the_rest_is_shown(store: FilesystemStore, keys) -> None:
    folder = store.root / "summaries"
    folder.mkdir()
    (folder / "broken.json").write_bytes(b'{"format": 1, "replica": ')
    (folder / "future.json").write_text('{"format": 99, "replica": "future"}')
    with _replica(store, keys, "reader") as srv:
        srv.wait_ready()
        _send(srv.url, "dock-9", [parcel_photo(700)])
        body = _monitoring(srv.url)
        assert _images(body) == {"dock-9": 1}
        reasons = {s["replica"]: s["reason"] for s in body["skipped"]}
        assert reasons["broken"] == "unreadable: not JSON" and "format 99" in reasons["future"]
        assert body["fleet"] is False  # nothing usable from another replica


def test_with_summaries_off_monitoring_is_this_replicas_alone(store: FilesystemStore, keys) -> None:
    with _replica(store, keys, "off", summary_interval_s=0) as srv:
        srv.wait_ready()
        _send(srv.url, "dock-0", [parcel_photo(800)])
        body = _monitoring(srv.url)
        assert body["fleet"] is False and _images(body) == {"dock-0": 1}
        assert [r["replica"] for r in body["replicas"]] == ["off"]
    assert not (store.root / "summaries").exists()  # nothing written


def test_a_restarted_replica_keeps_its_canary_comparisons_for_the_same_run_only() -> None:
    """Before a restart this replica compared 40 images of the canary run seq 7 at dock-1;
    after it, 10 more: its summary must say 50, not 10 (the fleet's evidence would shrink at
    every restart), and a run that is over must not count for the new one."""
    from app.ops.summaries import carry

    def row(seq: int, served: int, images: int, agree: int) -> dict[str, object]:
        counts = {"served": served, "images": images, "agree": agree, "to_positive": images - agree}
        return {"version": "v2", "against": "v1", "seq": seq, "station": "dock-1"} | counts

    before = [row(7, 45, 40, 38)]
    [kept] = carry(before, [])  # the canary not followed yet after the restart: kept as it was
    assert kept.items() >= before[0].items()
    [merged] = carry(before, [row(7, 12, 10, 10)])
    assert (merged["served"], merged["images"], merged["agree"], merged["to_positive"]) == (57, 50, 48, 2)
    assert carry(before, [row(8, 12, 10, 10)]) == [row(8, 12, 10, 10)]  # seq 7 is over: not evidence
