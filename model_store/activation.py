"""Moving a store's active pointer from a library or the CLI: verify, prove parity, swap.

The service proves bundles through its own serving pipeline instead; both end in the
store's `activate`/`rollback`, which refuse to move without a matching `ParityProof`.
"""

from __future__ import annotations

from model_store.bundle import Bundle
from model_store.parity import ParityProof
from model_store.predictor import Predictor
from model_store.store.base import AuditEntry, Store


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
