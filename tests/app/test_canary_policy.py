"""The rollout loop end to end, over real HTTP and the real CLI: a canary on one station,
traffic, every replica's evidence in the store, `canary check` by the stored policy. A
canary worse on purpose (a threshold that flags every parcel) is ended; a good one is
promoted; each with its evidence in the audit log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from model_store import activation
from model_store.store import FilesystemStore
from tests.utils.factories import make_monitored_bundle, parcel_photo
from tests.utils.server import ADMIN_TOKEN, LiveServer, admin
from tests.utils.waiting import eventually

pytestmark = pytest.mark.slow

REFERENCE = [parcel_photo(seed) for seed in range(60)]
# The untrained test model's cost per parcel is near 1 (it flags about half the photos):
# bundles state more, so no station raises a cost alarm unless the canary makes it worse.
DECISION: dict[str, object] = {"expected_cost": 2.0}
# Drift is left out: PSI on a few dozen test photos against a reference of 60 is mostly
# sampling noise (tests/model_store/test_rollout.py covers alarms holding a canary).
POLICY = {
    "min_images": 40,
    "min_agreement": 0.9,
    "max_cost_rise": 0.2,
    "max_summary_age_s": 60,
    "block_on_drift": False,
}


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory, keys) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("canary")
    return {
        # The same weights and reference for all three; "flood" decides damaged at any score.
        "a1": make_monitored_bundle(root / "a1", keys[0], "a1", REFERENCE, decision=DECISION).path,
        "good": make_monitored_bundle(root / "good", keys[0], "good", REFERENCE, decision=DECISION).path,
        "flood": make_monitored_bundle(
            root / "flood", keys[0], "flood", REFERENCE, decision={**DECISION, "threshold": 1e-6}
        ).path,
    }


def _predict(url: str, station: str, images: list[bytes]) -> set[str]:
    """Send `images` as `station`; the versions that decided."""
    seen = set()
    with httpx.Client(base_url=url, timeout=60) as c:
        for img in images:
            r = c.post("/v1/predict", content=img, headers={"Content-Type": "image/jpeg", "X-Station-ID": station})
            assert r.status_code == 200, r.text
            seen.add(r.json()["model"]["version"])
    return seen


def _check(store: FilesystemStore, keys) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "model_store", "canary", "check", "--store", str(store.root),
           "--public-key", str(keys[1]), "--actor", "cronjob"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def _compared(store: FilesystemStore, version: str, station: str) -> int:
    return sum(
        c["images"]
        for s in store.summaries()
        for c in s.get("comparisons", [])
        if c.get("version") == version and c.get("station") == station
    )


def test_a_worse_canary_is_ended_and_a_good_one_promoted_by_policy(tmp_path: Path, keys, versions) -> None:
    store = FilesystemStore(tmp_path / "store", keys[1])
    for path in versions.values():
        store.import_bundle(path, actor="t")
    activation.activate(store, "a1", actor="t")
    photos = [parcel_photo(2000 + i) for i in range(45)]  # past the policy's min_images
    with LiveServer(store.root, keys[1], admin_token=ADMIN_TOKEN, follow_interval_s=0.1, summary_interval_s=0.2) as srv:
        srv.wait_ready()
        r = httpx.put(f"{srv.url}/v1/canary/policy", json={"policy": POLICY, "reason": "test"}, headers=admin())
        assert r.status_code == 200, r.text
        assert _check(store, keys).stdout.startswith("no canary")

        # 1. The flood canary on dock-1 only: dock-1 is answered by it, dock-2 by the active.
        r = httpx.put(
            f"{srv.url}/v1/canary",
            json={"version": "flood", "stations": ["dock-1"], "reason": "try the new threshold"},
            headers=admin(),
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert _predict(srv.url, "dock-1", photos) == {"flood"}
        assert _predict(srv.url, "dock-2", photos[:5]) == {"a1"}
        eventually(lambda: _compared(store, "flood", "dock-1") >= 30, what="the comparison in the store", timeout=60)

        ended = _check(store, keys)
        assert ended.returncode == 0, ended.stderr
        assert "ended" in ended.stdout and "agreement" in ended.stdout, ended.stdout
        assert store.canary() is None and store.active_version() == "a1"
        entry = store.audit_log()[-1]
        assert (entry.action, entry.from_version, entry.to_version) == ("canary", "flood", None)
        assert entry.actor == "cronjob" and entry.evidence is not None
        evidence: dict[str, Any] = entry.evidence
        assert evidence["action"] == "end" and evidence["policy"]["min_images"] == POLICY["min_images"]
        [station] = evidence["stations"]
        assert station["station"] == "dock-1" and station["agreement"] < 0.9 and station["images"] >= 40
        eventually(lambda: _predict(srv.url, "dock-1", photos[:1]) == {"a1"}, what="dock-1 back on the active")

        # 2. The good canary: it agrees with the active and costs the same, so it is promoted.
        r = httpx.put(
            f"{srv.url}/v1/canary",
            json={"version": "good", "stations": ["dock-1"], "reason": "same decisions"},
            headers=admin(),
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert _predict(srv.url, "dock-1", photos) == {"good"}
        eventually(lambda: _compared(store, "good", "dock-1") >= 30, what="the comparison in the store", timeout=60)
        promoted = _check(store, keys)
        assert promoted.returncode == 0, promoted.stderr
        assert "promoted" in promoted.stdout, promoted.stdout
        assert store.active_version() == "good" and store.canary() is None
        entry = store.audit_log()[-1]
        assert (entry.action, entry.to_version, entry.actor) == ("promote", "good", "cronjob")
        assert entry.evidence is not None and entry.evidence["action"] == "promote"
        [station] = entry.evidence["stations"]
        assert station["agreement"] == 1.0 and station["active_cost_source"] == "window"
        eventually(lambda: _predict(srv.url, "dock-2", photos[:1]) == {"good"}, what="every station on the new active")
        log = json.loads(
            subprocess.run(
                [sys.executable, "-m", "model_store", "log", "--json", "--store", str(store.root)],
                capture_output=True, text=True, check=True, timeout=60,
            ).stdout.splitlines()[-1]
        )  # fmt: skip
        assert log["action"] == "promote" and log["evidence"]["stations"][0]["station"] == "dock-1"
