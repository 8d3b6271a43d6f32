"""Watching production over real HTTP: drift per station against the bundle's reference, the
quality estimated without labels and its cost alarm, captured requests, inspectors' feedback
beside the estimates, and the data set the next training run uses."""

from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.ops import drift
from app.ops.model_host import Loaded
from model_store import activation
from model_store import estimate as est
from model_store import monitoring as mon
from model_store.bundle import load_bundle
from model_store.store import FilesystemStore
from tests.utils.factories import make_monitored_bundle, parcel_photo
from tests.utils.server import ADMIN_TOKEN, LiveServer, admin
from tests.utils.waiting import eventually
from training.data import make_split
from training.feedback import dataset_from_feedback

pytestmark = pytest.mark.slow

REFERENCE = [parcel_photo(seed) for seed in range(120)]
ALARM_WITHIN = mon.MIN_IMAGES  # images: the first verdict a station gets


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory, keys) -> Path:
    return make_monitored_bundle(tmp_path_factory.mktemp("monitored") / "m1", keys[0], "m1", REFERENCE).path


@pytest.fixture
def monitored_store(tmp_path: Path, keys, monitored: Path) -> FilesystemStore:
    store = FilesystemStore(tmp_path / "store", keys[1])
    store.import_bundle(monitored, actor="t")
    activation.activate(store, "m1", actor="t")
    return store


def _send(url: str, images: list[bytes], station: str | None) -> None:
    headers = {"Content-Type": "image/jpeg", **({"X-Station-ID": station} if station else {})}
    with httpx.Client(base_url=url, timeout=60) as c:
        for img in images:
            assert c.post("/v1/predict", content=img, headers=headers).status_code == 200


def _station(url: str, name: str) -> dict[str, Any]:
    body = httpx.get(f"{url}/v1/monitoring", headers=admin()).json()
    return next(s for s in body["stations"] if s["station"] == name)


def test_a_darkened_or_resized_camera_raises_its_alarm_and_a_healthy_one_does_not(monitored_store, keys) -> None:
    with LiveServer(monitored_store.root, keys[1], admin_token=ADMIN_TOKEN) as srv:
        srv.wait_ready()
        # A long window of in-distribution photos (other parcels, same cameras): no alarm.
        _send(srv.url, [parcel_photo(1000 + i) for i in range(240)], "dock-1")
        healthy = _station(srv.url, "dock-1")
        assert healthy["window"] == 240 and healthy["alarm"] is False, healthy["drift"]
        assert max(healthy["drift"].values()) < mon.PSI_ALARM
        # Its quality, estimated from the served probabilities alone: every figure, each
        # inside its interval, and no cost alarm from a bundle that states no expected cost.
        estimate = healthy["estimate"]
        assert estimate["images"] == 240 and estimate["cost_limit"] is None and estimate["cost_alarm"] is False
        for figure in est.FIGURES:
            value, (low, high) = estimate["figures"][figure], estimate["intervals"][figure]
            assert 0 <= low <= value <= high, (figure, estimate)
        # A lens that lost light, and a camera switched to a lower resolution.
        _send(srv.url, [parcel_photo(2000 + i, brightness=0.45) for i in range(ALARM_WITHIN)], "dock-2")
        _send(srv.url, [parcel_photo(3000 + i, size=(96, 72)) for i in range(ALARM_WITHIN)], "dock-3")
        dark, small = _station(srv.url, "dock-2"), _station(srv.url, "dock-3")
        assert dark["alarm"] and "brightness" in dark["alarms"], dark["drift"]
        assert "brightness" in dark["estimate"]["image_drift"]  # its estimate is not to be trusted
        assert healthy["estimate"]["image_drift"] == []
        assert small["alarm"] and {"width", "height"} <= set(small["alarms"]), small["drift"]
        assert "aspect" not in small["alarms"]  # same shape, fewer pixels
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'drift_psi{feature="brightness",station="dock-2"}' in metrics
        for bound in ("expected", "low", "high"):
            assert f'estimated_cost_per_parcel{{bound="{bound}",station="dock-1"}}' in metrics
        assert 'estimated_cost_alarm{station="dock-1"} 0.0' in metrics
        # Fewer than MIN_IMAGES: no verdict yet, whatever the pictures.
        _send(srv.url, [parcel_photo(4000 + i, brightness=0.3) for i in range(ALARM_WITHIN - 1)], "dock-4")
        assert _station(srv.url, "dock-4")["drift"] == {}
        assert _station(srv.url, "dock-4")["estimate"] is None


def test_a_station_whose_estimated_cost_is_past_the_bundles_raises_the_cost_alarm(keys, tmp_path: Path) -> None:
    """The untrained test model flags about half of the photos, at a cost per parcel near 1;
    this bundle states 0.01, so any station past MIN_IMAGES is surely above 1.5 times it."""
    bundle = make_monitored_bundle(tmp_path / "c1", keys[0], "c1", REFERENCE[:40], decision={"expected_cost": 0.01})
    store = FilesystemStore(tmp_path / "store", keys[1])
    store.import_bundle(bundle.path, actor="t")
    activation.activate(store, "c1", actor="t")
    with LiveServer(store.root, keys[1], admin_token=ADMIN_TOKEN, cost_alarm_margin=0.5) as srv:
        srv.wait_ready()
        _send(srv.url, [parcel_photo(6000 + i) for i in range(mon.MIN_IMAGES - 1)], "dock-c")
        early = _station(srv.url, "dock-c")
        assert early["estimate"] is None and early["alarm"] is False  # no verdict on 29 images
        _send(srv.url, [parcel_photo(6100)], "dock-c")
        station = _station(srv.url, "dock-c")
        estimate = station["estimate"]
        assert estimate["cost_limit"] == pytest.approx(0.015) and estimate["cost_alarm"] is True
        assert estimate["intervals"]["cost_per_parcel"][0] > 0.015
        assert station["alarm"] is True and drift.COST_ALARM in station["alarms"]
        assert 'estimated_cost_alarm{station="dock-c"} 1.0' in httpx.get(f"{srv.url}/metrics").text


def test_the_estimate_leaves_out_images_answered_retake(monitored: Path, keys) -> None:
    """A retake gave no verdict: 30 photos judged intact and 10 frames sent back for a retake
    (whatever their score) make an estimate on 30 images, none of them flagged."""
    manifest = load_bundle(monitored, keys[1]).manifest
    loaded = Loaded("m1", manifest, "sha", None, 0.0)  # type: ignore[arg-type]
    scores = [0.2] * 30 + [0.99] * 10  # 30 judged intact, then 10 retakes whatever their score
    window = drift.Window(deque(scores), deque([False] * 30 + [True] * 10), {}, 40)
    [entry] = asyncio.run(drift.Monitor(windows={("m1", "dock"): window}).report(loaded))
    estimate: Any = entry["estimate"]
    assert estimate["images"] == 30
    assert estimate["figures"]["precision"] is None  # nothing judged was flagged


def test_station_ids_are_validated_and_bounded(monitored_store, keys) -> None:
    with LiveServer(monitored_store.root, keys[1], admin_token=ADMIN_TOKEN, max_stations=2) as srv:
        srv.wait_ready()
        r = httpx.post(
            f"{srv.url}/v1/predict",
            content=REFERENCE[0],
            headers={"Content-Type": "image/jpeg", "X-Station-ID": "../x"},
        )
        assert r.status_code == 422 and r.json()["error"] == "invalid_station_id"
        for name in ("a", "b", "c", "d"):
            _send(srv.url, REFERENCE[:1], name)
        _send(srv.url, REFERENCE[:1], None)
        names = {s["station"] for s in httpx.get(f"{srv.url}/v1/monitoring", headers=admin()).json()["stations"]}
        assert names == {"a", "b", "_other"}  # the bound holds: further stations share one window


def test_capture_feedback_and_a_dataset_train_accepts(monitored_store, keys, tmp_path: Path) -> None:
    capture = tmp_path / "capture"
    photos = [parcel_photo(5000 + i) for i in range(mon.MIN_IMAGES)]  # enough for an estimate; 6 get labelled
    with LiveServer(
        monitored_store.root, keys[1], admin_token=ADMIN_TOKEN, station_token="station-token-0123456789",
        capture_fraction=1.0, capture_location=str(capture),
    ) as srv:  # fmt: skip
        srv.wait_ready()
        ids, decisions = [], []
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            for img in photos:
                r = c.post("/v1/predict", content=img, headers={"Content-Type": "image/jpeg", "X-Station-ID": "dock-9"})
                ids.append(r.json()["request_id"])
                decisions.append(r.json()["results"][0]["decision"])
        eventually(lambda: sorted(p.name for p in (capture / "requests").iterdir()) == sorted(ids), what="captured")
        record = capture / "requests" / ids[0]
        assert (record / "0.jpg").read_bytes() == photos[0]  # the bytes the station sent

        truth = ["damaged", "damaged", "intact", "intact", "damaged", "intact"]
        station = {"Authorization": "Bearer station-token-0123456789", "X-Station-ID": "dock-9"}
        for rid, label in zip(ids[:6], truth, strict=True):
            r = httpx.post(
                f"{srv.url}/v1/feedback",
                json={"request_id": rid, "labels": [label], "inspector": "kim"},
                headers=station,
            )
            assert r.status_code == 201, r.text
        assert (
            httpx.post(
                f"{srv.url}/v1/feedback", json={"request_id": "nope", "labels": ["intact"]}, headers=station
            ).status_code
            == 404
        )
        assert (
            httpx.post(
                f"{srv.url}/v1/feedback", json={"request_id": ids[0], "labels": ["broken"]}, headers=station
            ).status_code
            == 422
        )
        assert (
            httpx.post(f"{srv.url}/v1/feedback", json={"request_id": ids[0], "labels": ["intact"]}).status_code == 401
        )

        body = httpx.get(f"{srv.url}/v1/monitoring", headers=admin()).json()
        feedback = body["feedback"]
        labelled = list(zip(decisions[:6], truth, strict=True))
        tp = sum(d == t == "damaged" for d, t in labelled)
        fp = sum(d == "damaged" != t for d, t in labelled)
        fn = sum(t == "damaged" != d for d, t in labelled)
        assert feedback["labelled_images"] == 6
        assert feedback["precision"] == (tp / (tp + fp) if tp + fp else None)
        assert feedback["recall"] == (tp / (tp + fn) if tp + fn else None)
        assert feedback["cost_per_parcel"] == pytest.approx((fp + 5 * fn) / 6)  # the bundle's costs: 1 and 5
        # Beside the station's estimate (its 30 images), the same figures on its 6 labels.
        dock = next(s for s in body["stations"] if s["station"] == "dock-9")
        assert dock["estimate"]["images"] == mon.MIN_IMAGES
        assert dock["labelled"] == feedback["stations"]["dock-9"]
        assert dock["labelled"]["labelled_images"] == 6 and dock["labelled"]["damage_rate"] == pytest.approx(0.5)
        assert dock["labelled"]["false_alarm_rate"] == pytest.approx(fp / 3)

    data = tmp_path / "from-feedback"
    counts = dataset_from_feedback(str(capture), data)
    assert counts == {"intact": 3, "damaged": 3}
    provenance = (data / "provenance.json").read_text()
    assert ids[0] in provenance and "dock-9" in provenance and '"served_by": "m1"' in provenance
    split = make_split(data, ("intact", "damaged"), 0, 0.2, 0.2)  # what `train` does with it first
    assert len(split.items) == 6


def test_capture_never_fails_a_prediction(monitored_store, keys, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the capture store should be")
    with LiveServer(monitored_store.root, keys[1], capture_fraction=1.0, capture_location=str(blocked)) as srv:
        srv.wait_ready()
        for img in REFERENCE[:5]:
            r = httpx.post(f"{srv.url}/v1/predict", content=img, headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200
        eventually(lambda: srv.app.state.service.capture.failed == 5, what="failures counted")
