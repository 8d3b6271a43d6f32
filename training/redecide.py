"""A new operating point for a signed bundle, without retraining.

The bundle carries its validation logits and labels; `redecide` runs the same choice as
training (`training.operating_point`) with new costs, damage rate or method, and writes a new signed
bundle: the parent's weights byte for byte, the parent's calibration and reference images,
a new decision section, parity expectations recomputed through the serving `Predictor`,
and lineage naming the parent's manifest digest.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from model_store import monitoring as mon
from model_store.bundle import Bundle, load_bundle
from model_store.errors import describe_validation_errors
from model_store.manifest import SCHEMA_VERSION, DecisionPolicy
from model_store.writer import ReferenceInput, write_bundle
from training.operating_point import choose_operating_point, served


class RedecideError(Exception):
    """The bundle cannot be re-decided as asked; the message says why."""


def redecide(
    bundle_dir: Path, public_key: Path, private_key: Path, version: str, out: Path, **changes: Any
) -> tuple[Bundle, Bundle]:
    """(parent, child): `changes` are DecisionPolicy fields (cost_miss, deployment_prevalence, ...)."""
    parent = load_bundle(bundle_dir, public_key)
    d = parent.manifest.decision
    if d.validation_scores is None:
        raise RedecideError(
            f"{parent.version} carries no validation scores (a schema 1 or hand-made bundle): retrain to re-decide"
        )
    unknown = sorted(set(changes) - set(DecisionPolicy.model_fields))
    if unknown:
        raise RedecideError(f"cannot change {unknown}: only {sorted(DecisionPolicy.model_fields)}")
    try:
        policy = DecisionPolicy.model_validate({**d.model_dump(include=set(DecisionPolicy.model_fields)), **changes})
    except ValidationError as exc:
        raise RedecideError(describe_validation_errors(exc.errors(), "decision")) from None
    if policy.method == "fixed":
        raise RedecideError("method 'fixed' keeps a hand-chosen threshold; choose min_expected_cost or target_recall")
    spec, _ = choose_operating_point(d.validation_scores.logits, d.validation_scores.labels, policy, d.calibration)
    m = parent.manifest
    monitoring = m.monitoring
    if monitoring is not None:  # the scores (and how often they decide positive) follow the new decision
        scores = served(d.validation_scores.logits, spec).tolist()
        score_hist, rate = mon.score_reference(scores, d.validation_scores.labels, spec)
        monitoring = monitoring.model_copy(
            update={"decision_rate": rate, "features": {**monitoring.features, "score": score_hist}}
        )
    manifest = m.model_copy(
        update={
            "schema_version": SCHEMA_VERSION,
            "version": version,
            "created_at": datetime.now(UTC),
            "decision": spec,
            "monitoring": monitoring,
            "lineage": m.lineage.model_copy(update={"parent_manifest_sha256": parent.manifest_sha256}),
        }
    )
    refs = [ReferenceInput(r.file, parent.references[r.file], r.label) for r in m.parity.references]
    child = write_bundle(out, manifest, parent.weights, refs, private_key)
    return parent, child
