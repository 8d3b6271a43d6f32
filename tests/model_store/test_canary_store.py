"""Station canaries in the store, on both backends (the filesystem and a real moto S3 server
on 127.0.0.1): start, change, end and promote are audited like activations and need the
same proofs; an evaluator that acts on a canary that changed meanwhile is refused inside the
atomic update; the promotion policy is a validated store setting."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from model_store.errors import CanaryChanged, CanaryConflict, InvalidCanary, StoreError, VersionNotFound, VersionRevoked
from model_store.parity import ParityProof
from model_store.rollout import Policy, station_share
from model_store.store.base import Canary, Store
from tests.utils.bundles import failing_parity_copy, proof_for, proof_from_elsewhere
from tests.utils.stores import reopen, store_snapshot


@pytest.fixture(scope="module")
def proofs(bundles, keys) -> dict[str, ParityProof]:
    return {v: proof_for(bundles[v], keys[1]) for v in ("v1", "v2")}


@pytest.fixture
def store(store_factory: Callable[..., Store], bundles, proofs) -> Store:
    """v1 active, v2 stored."""
    s = store_factory()
    for v in ("v1", "v2"):
        s.import_bundle(bundles[v], actor="test")
    s.activate("v1", actor="test", proof=proofs["v1"])
    return s


def test_a_canary_is_started_changed_and_ended_as_audited_store_settings(store: Store, proofs) -> None:
    assert store.canary() is None
    stamp = store.pointer_stamp()
    entry = store.set_canary(
        "v2", stations=["dock-1", "dock-2", "dock-1"], actor="ops", reason="try", proof=proofs["v2"]
    )
    canary = store.canary()
    assert canary == Canary("v2", ("dock-1", "dock-2"), 0.0, entry.seq, entry.time)
    assert reopen(store).canary() == canary  # every replica reads the same
    assert store.pointer_stamp() != stamp  # followers notice it like an activation
    assert (entry.action, entry.from_version, entry.to_version) == ("canary", None, "v2")
    assert entry.reason == "[stations dock-1, dock-2] try"
    assert canary.serves("dock-1") and not canary.serves("dock-3")
    assert store.active_version() == "v1"  # every other station keeps the active version

    changed = store.set_canary("v2", fraction=0.5, actor="ops", reason="wider", proof=proofs["v2"])
    canary = store.canary()
    assert canary is not None and (canary.stations, canary.fraction, canary.seq) == ((), 0.5, changed.seq)
    assert changed.from_version == "v2" and changed.reason == "[0.5 of stations] wider"
    stations = [f"st-{i}" for i in range(200)]
    assert [canary.serves(s) for s in stations] == [station_share(s) < 0.5 for s in stations]

    evidence = {"images": 412, "agreement": 0.97}
    ended = store.end_canary(actor="ops", reason="enough", evidence=evidence)
    assert store.canary() is None and store.active_version() == "v1"
    assert (ended.action, ended.from_version, ended.to_version, ended.evidence) == ("canary", "v2", None, evidence)
    logged = reopen(store).audit_log()
    assert [e.action for e in logged][-3:] == ["canary", "canary", "canary"]
    assert logged[-1].evidence == evidence and logged[-2].evidence is None
    assert logged[-1].to_dict()["evidence"] == evidence


def test_promoting_the_canary_makes_it_active_with_history_and_evidence(store: Store, proofs) -> None:
    started = store.set_canary("v2", stations=["dock-1"], actor="ops", proof=proofs["v2"])
    promoted = store.promote_canary(
        actor="policy", reason="met the policy", proof=proofs["v2"], expect_seq=started.seq, evidence={"cost": 0.1}
    )
    assert (promoted.action, promoted.from_version, promoted.to_version) == ("promote", "v1", "v2")
    assert promoted.evidence == {"cost": 0.1}
    assert store.active_version() == "v2" and store.canary() is None
    assert store.previous_version() == "v1"  # a rollback goes back, as after an activation
    assert reopen(store).audit_log()[-1] == promoted


def test_a_promotion_needs_a_proof_of_the_canarys_stored_bundle(store: Store, proofs) -> None:
    store.set_canary("v2", stations=["dock-1"], actor="ops", proof=proofs["v2"])
    before = store_snapshot(store)
    with pytest.raises(StoreError, match="the canary is v2, not v1"):
        store.promote_canary(actor="ops", proof=proofs["v1"])
    forged = ParityProof("v2", "0" * 64, 0.0)
    with pytest.raises(StoreError, match="prove the stored bundle first"):
        store.promote_canary(actor="ops", proof=forged)
    with pytest.raises(StoreError, match="prove the stored bundle first"):
        store.set_canary("v2", fraction=0.3, actor="ops", proof=forged)
    assert store_snapshot(store) == before


def test_two_evaluators_acting_at_once_only_one_acts(store: Store, proofs) -> None:
    seq = store.set_canary("v2", stations=["dock-1"], actor="ops", proof=proofs["v2"]).seq
    results: list[object] = []
    barrier = threading.Barrier(2)

    def evaluator(promote: bool) -> None:
        other = reopen(store)  # as another process (another replica, a cron job) would
        barrier.wait()
        try:
            if promote:
                results.append(other.promote_canary(actor="a", proof=proofs["v2"], expect_seq=seq))
            else:
                results.append(other.end_canary(actor="b", expect_seq=seq, evidence={"why": "cost"}))
        except StoreError as exc:
            results.append(exc)

    threads = [threading.Thread(target=evaluator, args=(p,)) for p in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [r for r in results if isinstance(r, StoreError)]
    assert len(refused) == 1 and isinstance(refused[0], CanaryChanged), results
    assert "the canary changed since it was evaluated" in str(refused[0])
    assert store.canary() is None
    assert [e.action for e in store.audit_log()].count("promote") + [
        e.to_version for e in store.audit_log() if e.action == "canary"
    ].count(None) == 1  # exactly one of the two acted, once
    # A later evaluation of that ended run changes nothing either.
    before = store_snapshot(store)
    with pytest.raises(CanaryChanged):
        store.end_canary(actor="c", expect_seq=seq)
    assert store_snapshot(store) == before


def test_a_change_makes_an_evaluation_of_the_earlier_run_stale(store: Store, proofs) -> None:
    first = store.set_canary("v2", stations=["dock-1"], actor="ops", proof=proofs["v2"])
    store.set_canary("v2", stations=["dock-1", "dock-2"], actor="ops", proof=proofs["v2"])
    before = store_snapshot(store)
    with pytest.raises(CanaryChanged, match=rf"it was seq {first.seq}, now seq {first.seq + 1}"):
        store.promote_canary(actor="ops", proof=proofs["v2"], expect_seq=first.seq)
    assert store_snapshot(store) == before and store.active_version() == "v1"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"version": "v1", "stations": ["a"]}, CanaryConflict, "v1 is the active version already"),
        ({"version": "v2"}, InvalidCanary, "give one, not both"),
        ({"version": "v2", "stations": ["a"], "fraction": 0.5}, InvalidCanary, "give one, not both"),
        ({"version": "v2", "fraction": 1.5}, InvalidCanary, r"in \(0, 1\]"),
        ({"version": "v2", "fraction": -0.5}, InvalidCanary, r"in \(0, 1\]"),
        ({"version": "v2", "stations": ["dock 1"]}, InvalidCanary, "invalid station ID 'dock 1'"),
        ({"version": "v2", "stations": ["x" * 65]}, InvalidCanary, "invalid station ID"),
        ({"version": "v7", "stations": ["a"]}, VersionNotFound, "v7"),
    ],
)
def test_invalid_canaries_are_refused_and_change_nothing(store: Store, proofs, kwargs, error, match) -> None:
    kwargs = dict(kwargs)  # the parameter is shared by both backends' runs
    version = kwargs.pop("version")
    proof = proofs.get(version, ParityProof(version, "0" * 64, 0.0))
    before = store_snapshot(store)
    with pytest.raises(error, match=match):
        store.set_canary(version, actor="ops", proof=proof, **kwargs)
    assert store_snapshot(store) == before


def test_ending_or_promoting_without_a_canary_is_refused(store: Store, proofs) -> None:
    before = store_snapshot(store)
    with pytest.raises(CanaryConflict, match="there is no canary"):
        store.end_canary(actor="ops")
    with pytest.raises(CanaryConflict, match="there is no canary"):
        store.promote_canary(actor="ops", proof=proofs["v2"])
    assert store_snapshot(store) == before


def test_revocation_and_canaries_exclude_each_other(store: Store, proofs) -> None:
    store.revoke("v2", actor="ops", reason="bad")
    with pytest.raises(VersionRevoked, match="refusing to make it the canary"):
        store.set_canary("v2", stations=["a"], actor="ops", proof=proofs["v2"])
    store.revoke("v2", actor="ops", reason="false alarm", undo=True)
    store.set_canary("v2", stations=["a"], actor="ops", proof=proofs["v2"])
    before = store_snapshot(store)
    with pytest.raises(CanaryConflict, match="v2 is the canary: end the canary first"):
        store.revoke("v2", actor="ops", reason="bad")
    assert store_snapshot(store) == before


def test_activations_keep_a_canary_unless_its_version_becomes_active(
    store: Store, proofs, bundles, keys, tmp_path: Path
) -> None:
    v3 = failing_parity_copy(bundles["v2"], tmp_path / "v3", keys[0], "v3")
    store.import_bundle(v3, actor="test")
    v3_proof = proof_from_elsewhere(v3)
    started = store.set_canary("v2", stations=["a"], actor="ops", proof=proofs["v2"])
    moved = store.activate("v3", actor="ops", proof=v3_proof)  # another version: the canary stays
    assert (canary := store.canary()) is not None and canary.version == "v2" and canary.stations == ("a",)
    # ... as a new run, compared with v3: an evaluation against v1 must not promote it over
    # the operator's v3 (nor end it on evidence about v1).
    assert canary.seq == moved.seq and canary.since == started.time
    with pytest.raises(CanaryChanged):
        store.promote_canary(actor="cron", proof=proofs["v2"], expect_seq=started.seq)
    with pytest.raises(CanaryChanged):
        store.end_canary(actor="cron", expect_seq=started.seq)
    assert store.active_version() == "v3" and store.canary() == canary
    back = store.rollback(actor="ops", proof=proofs["v1"])  # back to v1: still a canary of v2
    assert (canary := store.canary()) is not None and canary.seq == back.seq and store.active_version() == "v1"
    store.activate("v2", actor="ops", proof=proofs["v2"])  # the canary's own version: it ends
    assert store.canary() is None and store.active_version() == "v2"
    store.set_canary("v1", stations=["a"], actor="ops", proof=proofs["v1"])
    store.rollback(actor="ops", proof=proofs["v1"])  # rolled back onto the canary's version
    assert store.canary() is None and store.active_version() == "v1"


def test_the_promotion_policy_is_a_validated_audited_setting(store: Store) -> None:
    assert store.policy() is None
    entry = store.set_policy({"min_images": 50, "min_agreement": 0.95}, actor="ops", reason="stricter")
    assert reopen(store).policy() == {"min_images": 50, "min_agreement": 0.95}
    assert Policy.from_dict(store.policy()).min_images == 50
    assert (entry.action, entry.evidence) == ("policy", {"policy": {"min_images": 50, "min_agreement": 0.95}})
    before = store_snapshot(store)
    with pytest.raises(StoreError, match="unknown promotion policy setting"):
        store.set_policy({"min_imgs": 5}, actor="ops")
    assert store_snapshot(store) == before
