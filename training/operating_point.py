"""The operating point from validation scores: calibrate, shift to the deployment damage
rate, choose the threshold. Training (`finalize`) and `redecide` both call `decide`, so a
re-decided bundle's threshold is exactly the one training would have chosen.

`split_figures` is the one definition of a split's headline figures (recall, false-alarm
rate, precision, cost per parcel at the deployment rate, ROC-AUC, ECE, each with its 95%
interval): training's `eval.json`, the manifest's validation metrics, the report and
`python -m training evaluate` all come from it, on the probabilities the service serves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from model_store.manifest import (
    CalibrationSpec,
    DecisionPolicy,
    DecisionSpec,
    ValidationMetrics,
    ValidationScores,
    log_odds,
)
from model_store.predictor import served_probabilities
from training import calibration as C
from training import metrics as M
from training.sufficiency import WARN_BELOW, sample_warning

# A threshold this close to 0 or 1 sits where served probabilities saturate in float32:
# decisions there flip on rounding, and it means "flag every parcel" or "flag none".
EDGE = 1e-4


def served(logits: object, spec: DecisionSpec) -> np.ndarray:
    """What the Predictor would answer for these logits, as float64 for threshold search."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    out: np.ndarray = served_probabilities(z, spec).numpy().astype(np.float64)
    return out


def cost_rate(spec: DecisionSpec) -> float | None:
    """The damage rate every cost figure is at: the deployment rate (validation's when unset)."""
    return spec.deployment_prevalence or spec.validation_prevalence


def at_rate(served_probs: object, spec: DecisionSpec, rate: float) -> np.ndarray:
    """Served probabilities re-expressed for a data set whose damage rate is `rate` (Bayes'
    rule on the odds): calibration is judged against the rate the labels were drawn at."""
    p = np.asarray(served_probs, dtype=np.float64)
    served_for = spec.deployment_prevalence if spec.validation_prevalence is not None else None
    if served_for is None or not 0 < rate < 1:
        return p  # served at the validation split's own rate, or nothing to shift to
    with np.errstate(divide="ignore"):
        z = np.log(p) - np.log1p(-p)
    out: np.ndarray = C.logistic(z - log_odds(served_for) + log_odds(rate))
    return out


def split_figures(prefix: str, served_probs: object, labels: object, spec: DecisionSpec) -> dict[str, Any]:
    """`{prefix}_roc_auc`, `_pr_auc`, `_log_loss`, `_ece`, `at_threshold` (cost per parcel at
    `cost_rate(spec)`, counts at the split's own rate), `intervals`, `counts`, `warnings`."""
    p = np.asarray(served_probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    rate = cost_rate(spec)
    own = at_rate(p, spec, float(y.mean()) if len(y) else 0.0)
    op = M.at_threshold(p, y, spec.threshold, spec.cost_false_alarm, spec.cost_miss, rate)
    counts = {spec.negative_label: int((y == 0).sum()), spec.positive_label: int((y == 1).sum())}
    name = f"the {prefix} split" if prefix in ("val", "test") else "the evaluated images"
    return {
        f"{prefix}_roc_auc": M.roc_auc(p, y),
        f"{prefix}_pr_auc": M.average_precision(p, y),
        f"{prefix}_log_loss": C.log_loss(own, y),  # of the probabilities at the split's own rate
        f"{prefix}_ece": C.expected_calibration_error(own, y),
        "at_threshold": op.as_dict(),
        "intervals": {
            k: list(v)
            for k, v in M.figure_intervals(
                p, y, spec.threshold, spec.cost_false_alarm, spec.cost_miss, rate, own
            ).items()
        },
        "counts": counts,
        "warnings": [w for w in [sample_warning(name, counts)] if w],
    }


def _finite(v: float) -> float | None:
    return v if np.isfinite(v) else None  # a class missing from the split: no ROC-AUC


def threshold_warnings(probs: np.ndarray, labels: np.ndarray, threshold: float) -> list[str]:
    """Why a threshold chosen on these validation probabilities is not to be trusted, if it is not."""
    out = []
    if threshold <= EDGE or threshold >= 1 - EDGE:
        flagged = int((probs >= threshold).sum())
        out.append(
            f"threshold {threshold:.6f} is at the edge of [0, 1] (it flags {flagged} of {len(probs)} validation "
            "images): the probabilities are saturated or the model does not separate the classes at these costs"
        )
    pos, neg = probs[labels == 1], probs[labels == 0]
    n = min(len(pos), len(neg))
    if n and pos.min() > neg.max() and n < WARN_BELOW:
        lo, _ = M.wilson(len(pos), len(pos))
        out.append(
            f"validation is perfectly separated on {len(probs)} images: any threshold between {neg.max():.4g} "
            f"and {pos.min():.4g} scores the same, and catching all {len(pos)} damaged ones only says recall "
            f">= {lo:.2f} (95%)"
        )
    return out


def choose_operating_point(
    logits: object, labels: object, policy: DecisionPolicy, calibration: CalibrationSpec
) -> tuple[DecisionSpec, dict[str, Any]]:
    """The decision section for validation (logits, 0/1 labels) under `policy`, and the
    validation figures at its threshold (`split_figures`; every cost at the deployment rate)."""
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
    op = M.choose_threshold(
        probs,
        y,
        method=policy.method,
        cost_false_alarm=policy.cost_false_alarm,
        cost_miss=policy.cost_miss,
        target_recall=policy.target_recall,
        prevalence=cost_rate(base),
    )
    chosen = base.model_copy(update={"threshold": op.threshold, "expected_cost": op.expected_cost})
    figures = split_figures("val", probs, y, chosen)
    noted = [calibration.note] if calibration.note else []
    figures["warnings"] = noted + figures["warnings"] + threshold_warnings(probs, y, op.threshold)
    at = figures["at_threshold"]
    spec = chosen.model_copy(
        update={
            "validation": ValidationMetrics(
                **{k: at[k] for k in ("precision", "recall", "false_positive_rate", "accuracy", "expected_cost", "n")},
                positives=int(y.sum()),
                damage_rate=at["damage_rate"],
                roc_auc=_finite(figures["val_roc_auc"]),
                ece=_finite(figures["val_ece"]),
                intervals={k: (v[0], v[1]) for k, v in figures["intervals"].items() if np.isfinite(v).all()},
            ),
            "validation_scores": ValidationScores(logits=[float(v) for v in z], labels=[int(v) for v in y]),
            "warnings": figures["warnings"],
        }
    )
    return DecisionSpec.model_validate(spec.model_dump()), figures
