"""The operating point from validation scores: calibrate, shift to the deployment damage
rate, choose the threshold. Training (`finalize`) and `redecide` both call `decide`, so a
re-decided bundle's threshold is exactly the one training would have chosen.
"""

from __future__ import annotations

import numpy as np
import torch

from model_store.manifest import CalibrationSpec, DecisionPolicy, DecisionSpec, ValidationMetrics, ValidationScores
from model_store.predictor import served_probabilities
from training import metrics as M


def served(logits: object, spec: DecisionSpec) -> np.ndarray:
    """What the Predictor would answer for these logits, as float64 for threshold search."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    out: np.ndarray = served_probabilities(z, spec).numpy().astype(np.float64)
    return out


def decide(
    logits: object, labels: object, policy: DecisionPolicy, calibration: CalibrationSpec
) -> tuple[DecisionSpec, M.OperatingPoint]:
    """The decision section for validation (logits, 0/1 labels) under `policy`, and the
    validation operating point at its threshold (counts at the validation split's own rate;
    `expected_cost` in the spec is at the deployment rate)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    rate = float(y.mean())
    base = DecisionSpec(
        **policy.model_dump(include=set(DecisionPolicy.model_fields)),
        threshold=0.5,  # replaced below; the probabilities do not depend on it
        calibration=calibration,
        validation_prevalence=rate,
    )
    probs = served(z, base)
    deployment = policy.deployment_prevalence or rate
    op = M.choose_threshold(
        probs,
        y,
        method=policy.method,
        cost_false_alarm=policy.cost_false_alarm,
        cost_miss=policy.cost_miss,
        target_recall=policy.target_recall,
        prevalence=deployment,
    )
    at_validation = M.at_threshold(probs, y, op.threshold, policy.cost_false_alarm, policy.cost_miss)
    spec = base.model_copy(
        update={
            "threshold": op.threshold,
            "expected_cost": op.expected_cost,
            "validation": ValidationMetrics(**{k: getattr(at_validation, k) for k in ValidationMetrics.model_fields}),
            "validation_scores": ValidationScores(logits=[float(v) for v in z], labels=[int(v) for v in y]),
        }
    )
    return DecisionSpec.model_validate(spec.model_dump()), at_validation
