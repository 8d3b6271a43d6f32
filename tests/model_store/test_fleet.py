"""The fleet's window summaries without a service: what a replica writes, how the replicas'
summaries merge (fresh ones only, every one listed), what a reader skips (and says why),
and the store's summary objects on both backends, which never wake a follower."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable

import pytest

from model_store import fleet
from model_store import monitoring as mon
from model_store.errors import NotAStore, StoreError
from model_store.fleet import IMAGE_FEATURES, Window
from model_store.store.base import MAX_SUMMARY_BYTES, Store
from model_store.store.filesystem import FilesystemStore
from model_store.store.s3 import S3Store

NOW = 1_700_000_000.0


def _scores(values: list[float], retakes: list[bool] | None = None) -> Window:
    return Window(deque(values), deque(retakes or [False] * len(values)), {}, len(values))


def _camera(brightness: list[float]) -> Window:
    n = len(brightness)
    features = {f: deque(brightness if f == "brightness" else [1.0] * n) for f in IMAGE_FEATURES}
    return Window(features=features, images=n)


def _summary(replica: str, windows: dict[fleet.Key, Window], *, at: float = NOW) -> fleet.Summary:
    raw = json.loads(json.dumps(fleet.summary(replica, at - 60, windows, [], "v1", None, now=at)))
    parsed = fleet.parse_summary(raw)
    assert parsed is not None
    return parsed


def test_a_summary_round_trips_through_json_rounded_and_in_order() -> None:
    windows = {("v1", "dock-1"): _scores([0.1234567891, 0.9], [False, True]), (None, "dock-1"): _camera([100.123456])}
    compared = {"version": "v2", "against": "v1", "seq": 7, "station": "dock-1", "images": 4, "agree": 3}
    raw = fleet.summary("replica-a", NOW - 5, windows, [compared], "v1", "v2", now=NOW)
    back = fleet.parse_summary(json.loads(json.dumps(raw)))
    assert back is not None
    assert (back.replica, back.written_at, back.started_at, back.served, back.canary) == (
        "replica-a", NOW, NOW - 5, "v1", "v2",
    )  # fmt: skip
    assert back.comparisons == [compared]
    assert list(back.windows[("v1", "dock-1")].scores) == [0.123457, 0.9]  # 6 decimals: decisions as served
    assert list(back.windows[("v1", "dock-1")].retakes) == [False, True]
    assert list(back.windows[(None, "dock-1")].features["brightness"]) == [100.12]
    assert back.windows[(None, "dock-1")].images == 1


def test_a_fixed_camera_frame_read_back_from_a_summary_is_no_aspect_drift() -> None:
    """Every validation photo 160x120: the reference cuts its aspect histogram at exactly 4/3.
    Read back from the store, the same frames must land in that bin (a rounded 1.3333 did
    not, and raised an aspect alarm on a healthy station of a replica's summary)."""
    reference = mon.fit_histogram([160 / 120] * 50)
    live = _camera([100.0] * 40)
    live.features["aspect"] = deque([160 / 120] * 40)
    back = _summary("a", {(None, "dock-1"): live}).windows[(None, "dock-1")]
    assert mon.psi(reference, back.column("aspect")) == pytest.approx(0.0)


def test_a_summary_dated_in_the_future_is_stale_not_fresh_forever() -> None:
    """A replica whose clock runs a day ahead (or a hand-written `written_at`) would otherwise
    count as fresh until that day, however long ago it stopped."""
    ahead = _summary("ahead", {("v1", "dock-1"): _scores([0.1] * 3)}, at=NOW + 86400)
    assert fleet.merge([ahead], now=NOW, max_age_s=300) == {}
    [row] = fleet.replicas([ahead], now=NOW, max_age_s=300)
    assert row["stale"] is True


def test_a_deeply_nested_object_in_the_store_is_named_unreadable_not_a_crash() -> None:
    from model_store.store.base import decode_summary

    assert decode_summary("deep", b"[" * 100_000) == {"replica": "deep", "unreadable": "not JSON"}


def test_a_replica_with_more_rows_than_the_bound_keeps_each_windows_most_recent() -> None:
    windows: dict[fleet.Key, Window] = {("v1", f"dock-{i}"): _scores([i / 1000] * 50 + [0.5] * 50) for i in range(10)}
    raw = fleet.summary("a", NOW, windows, [], "v1", None, now=NOW, max_rows=400)
    assert all(len(w["scores"]) == 40 and set(w["scores"]) == {0.5} for w in raw["windows"])  # 400 / 10 windows
    assert all(w["images"] == 100 for w in raw["windows"])  # the count is still the whole history


def test_merging_concatenates_each_keys_windows_and_leaves_out_stale_replicas_but_lists_them() -> None:
    a = _summary("a", {("v1", "dock-1"): _scores([0.1] * 3), (None, "dock-1"): _camera([10.0] * 3)})
    b = _summary("b", {("v1", "dock-1"): _scores([0.2] * 2), ("v1", "dock-2"): _scores([0.3])}, at=NOW - 10)
    gone = _summary("c", {("v1", "dock-3"): _scores([0.4])}, at=NOW - 1000)
    merged = fleet.merge([a, b, gone], now=NOW, max_age_s=300)
    assert set(merged) == {("v1", "dock-1"), (None, "dock-1"), ("v1", "dock-2")}  # nothing of stale c
    assert merged[("v1", "dock-1")].images == 5 and sorted(merged[("v1", "dock-1")].scores) == [0.1] * 3 + [0.2] * 2
    rows = {r["replica"]: r for r in fleet.replicas([a, b, gone], now=NOW, max_age_s=300)}
    assert {n: (r["age_s"], r["stale"], r["windows"]) for n, r in rows.items()} == {
        "a": (0.0, False, 2), "b": (10.0, False, 2), "c": (1000.0, True, 1),
    }  # fmt: skip
    assert a.windows[("v1", "dock-1")].images == 3  # merging copies: the summaries are unchanged


def test_an_older_copy_of_a_replicas_summary_is_not_merged_twice() -> None:
    old = _summary("a", {("v1", "dock-1"): _scores([0.1] * 4)}, at=NOW - 30)
    new = _summary("a", {("v1", "dock-1"): _scores([0.1] * 5)})
    assert fleet.merge([old, new], now=NOW, max_age_s=300)[("v1", "dock-1")].images == 5


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ([1, 2], "not a JSON object"),
        ({"replica": "x", "unreadable": "not JSON"}, "unreadable: not JSON"),
        ({"format": 2, "replica": "x"}, "format 2"),
        ({"format": 1, "replica": "../x", "written_at": NOW, "started_at": NOW, "windows": []}, "replica"),
        ({"format": 1, "replica": "x", "written_at": "soon", "started_at": NOW, "windows": []}, "written_at"),
        ({"format": 1, "replica": "x", "written_at": NOW, "started_at": NOW, "windows": {}}, "windows"),
        (
            {"format": 1, "replica": "x", "written_at": NOW, "started_at": NOW,
             "windows": [{"version": "v1", "station": "d", "images": 1, "scores": [0.5], "retakes": [0, 1]}]},
            "retakes",
        ),
        (
            {"format": 1, "replica": "x", "written_at": NOW, "started_at": NOW,
             "windows": [{"version": None, "station": "d", "images": 1, "features": {"brightness": ["dark"]}}]},
            "not a finite number",
        ),
        (
            {"format": 1, "replica": "x", "written_at": NOW, "started_at": NOW,
             "windows": [{"version": None, "station": "d", "images": 1, "features": {"colour": [1.0]}}]},
            "features",
        ),
        # Canary comparisons are evidence a verdict counts: whole counts, no more agreements
        # than images (a negative or inflated count would push the agreement past 0..1).
        (
            {"format": 1, "replica": "x", "written_at": NOW, "started_at": NOW, "windows": [],
             "comparisons": [{"version": "v2", "against": "v1", "seq": 3, "station": "d", "images": "x"}]},
            "images must be a whole number",
        ),
        (
            {"format": 1, "replica": "x", "written_at": NOW, "started_at": NOW, "windows": [],
             "comparisons": [{"version": "v2", "against": "v1", "seq": 3, "station": "d", "images": -5}]},
            "images must be a whole number",
        ),
        (
            {"format": 1, "replica": "x", "written_at": NOW, "started_at": NOW, "windows": [],
             "comparisons": [{"version": "v2", "against": "v1", "seq": 3, "station": "d", "images": 2, "agree": 9}]},
            "more agreements than images",
        ),
        (
            {"format": 1, "replica": "x", "written_at": NOW, "started_at": NOW, "windows": [],
             "comparisons": [{"version": "v2", "seq": 3, "station": "d", "images": 2}]},
            "against missing",
        ),
    ],
)  # fmt: skip
def test_a_malformed_or_foreign_summary_is_skipped_with_its_reason(raw: object, reason: str) -> None:
    good = json.loads(json.dumps(fleet.summary("good", NOW, {("v1", "d"): _scores([0.5])}, [], "v1", None, now=NOW)))
    assert fleet.parse_summary(raw) is None
    summaries, skipped = fleet.parse_summaries([raw, good])
    assert [s.replica for s in summaries] == ["good"]  # one bad object never hides the others
    assert len(skipped) == 1 and reason in skipped[0].reason, skipped


def test_a_station_report_judges_image_features_from_the_camera_window_and_scores_from_the_versions(
    monitored_manifest,
) -> None:
    """After a swap the version's window is empty, the camera's is not: image PSI, no score PSI."""
    dark = _camera([5.0] * 40)
    entry = fleet.station_report(monitored_manifest, "v2", "dock", Window(), 0.5, dark)
    assert entry["images"] == entry["window"] == 0 and entry["image_window"] == 40
    assert "score" not in entry["drift"] and entry["drift"]["brightness"] > 0.25
    assert entry["alarm"] and "brightness" in entry["alarms"] and entry["estimate"] is None


@pytest.fixture(scope="module")
def monitored_manifest(tmp_path_factory: pytest.TempPathFactory, keys):
    from model_store.bundle import load_bundle
    from tests.utils.factories import make_monitored_bundle, parcel_photo

    out = tmp_path_factory.mktemp("fleet-bundle") / "m1"
    bundle = make_monitored_bundle(out, keys[0], "m1", [parcel_photo(i) for i in range(40)])
    return load_bundle(bundle.path, keys[1]).manifest


# --- the store's summary objects, on both backends ---------------------------------------


def test_summaries_are_written_read_back_and_never_wake_a_follower(
    store_factory: Callable[..., Store], bundles
) -> None:
    store = store_factory()
    with pytest.raises(NotAStore):
        store.write_summary("a", {"format": 1})  # a typo'd location is not turned into a store
    with pytest.raises(NotAStore):
        store.summaries()
    store.import_bundle(bundles["v1"], actor="test")
    assert store.summaries() == []
    stamp = store.pointer_stamp()
    first = fleet.summary("a", NOW, {("v1", "d"): _scores([0.5])}, [], "v1", None, now=NOW)
    store.write_summary("a", first)
    store.write_summary("b", fleet.summary("b", NOW, {}, [], "v1", None, now=NOW))
    store.write_summary("a", {**first, "written_at": NOW + 30})  # replaced, not added
    assert store.pointer_stamp() == stamp
    got = store.summaries()
    assert [s["replica"] for s in got] == ["a", "b"] and got[0]["written_at"] == NOW + 30
    assert store.summaries(newer_than=2**40) == []  # written long before that: not even read
    for bad in ("", "../x", "a/b", ".hidden", "x" * 129, "a b"):
        with pytest.raises(StoreError, match="invalid replica ID"):
            store.write_summary(bad, first)
    with pytest.raises(StoreError, match="over the bound"):
        store.write_summary("a", {"windows": "x" * MAX_SUMMARY_BYTES})
    assert store.audit_log()[-1].action == "import"  # not audited


def test_an_unreadable_summary_object_is_named_and_the_others_still_read(
    store_factory: Callable[..., Store], bundles
) -> None:
    store = store_factory()
    store.import_bundle(bundles["v1"], actor="test")
    store.write_summary("good", fleet.summary("good", NOW, {}, [], "v1", None, now=NOW))
    _put_raw(store, "broken", b"{not json")
    _put_raw(store, "listed", b"[1, 2, 3]")
    _put_raw(store, "huge", b" " * (MAX_SUMMARY_BYTES + 1))
    got = {s["replica"]: s for s in store.summaries()}
    assert got["good"]["format"] == 1
    assert got["broken"]["unreadable"] == "not JSON"
    assert got["listed"]["unreadable"].startswith("not a JSON object")
    assert "over" in got["huge"]["unreadable"]
    summaries, skipped = fleet.parse_summaries(store.summaries())
    assert [s.replica for s in summaries] == ["good"]
    assert sorted(s.replica for s in skipped) == ["broken", "huge", "listed"]


def _put_raw(store: Store, name: str, data: bytes) -> None:
    """An object written by something else than a replica (by hand, a broken tool)."""
    if isinstance(store, FilesystemStore):
        (store.root / "summaries").mkdir(exist_ok=True)
        (store.root / "summaries" / f"{name}.json").write_bytes(data)
        return
    import boto3

    assert isinstance(store, S3Store)
    boto3.client("s3").put_object(Bucket=store.bucket, Key=f"{store.prefix}/summaries/{name}.json", Body=data)
