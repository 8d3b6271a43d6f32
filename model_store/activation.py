"""Moving a store's active pointer from a library or the CLI: verify, prove parity, swap.

The service proves bundles through its own serving pipeline instead; both end in the
store's `activate`/`rollback`, which refuse to move without a matching `ParityProof`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from model_store.bundle import Bundle
from model_store.errors import CanaryConflict
from model_store.parity import ParityProof
from model_store.predictor import Predictor
from model_store.store.base import AuditEntry, Store, canary_stations


def prove(bundle: Bundle, device: str = "cpu") -> ParityProof:
    """Run the bundle's reference images through the `Predictor`; the proof, or `ParityFailed`."""
    return Predictor(bundle, device=device).check_parity().require_pass()


def activate(store: Store, version: str, *, actor: str, reason: str = "") -> AuditEntry:
    """Verify the stored bundle, pass parity, then point the store at it."""
    store.refuse_revoked(version, "activate it")  # before minutes of parity, not after
    return store.activate(version, actor=actor, reason=reason, proof=prove(store.load(version)))


def rollback(store: Store, *, actor: str, reason: str = "") -> AuditEntry:
    """Verify and prove the previously active version, then roll back to it."""
    target = store.rollback_candidate()
    return store.rollback(actor=actor, reason=reason, proof=prove(store.load(target)))


def start_canary(
    store: Store, version: str, *, stations: Sequence[str] = (), fraction: float = 0.0, actor: str, reason: str = ""
) -> AuditEntry:
    """Verify and prove the stored bundle, then make it the canary of `stations` or a
    `fraction` of stations (or change the running canary)."""
    canary_stations(stations, fraction)  # before minutes of parity, not after
    store.refuse_revoked(version, "make it the canary")
    proof = prove(store.load(version))
    return store.set_canary(
        version, stations=tuple(stations), fraction=fraction, actor=actor, reason=reason, proof=proof
    )


def promote_canary(
    store: Store,
    *,
    actor: str,
    reason: str = "",
    expect_seq: int | None = None,
    evidence: dict[str, Any] | None = None,
) -> AuditEntry:
    """Verify and prove the canary's stored bundle, then make it the active version.

    Refused (`CanaryChanged`) if the canary changes before the store writes: the one that
    was proved (or `expect_seq`, the one the caller evaluated) must still be running."""
    canary = store.canary()
    if canary is None:
        raise CanaryConflict("there is no canary")
    proof = prove(store.load(canary.version))
    seq = canary.seq if expect_seq is None else expect_seq
    return store.promote_canary(actor=actor, reason=reason, proof=proof, expect_seq=seq, evidence=evidence)
