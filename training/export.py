"""A run's best checkpoint → a signed bundle, checked against the training evaluation.

Reference images are a fixed sample of the test split (both classes) plus the test images
nearest the threshold. Their expected outputs are computed by `write_bundle`, which reloads
the signed draft through the serving `Predictor`. Then the whole test split goes through
that `Predictor` too, and export fails if it disagrees with what training reported.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model_store import domain
from model_store import monitoring as mon
from model_store.bundle import Bundle
from model_store.errors import ModelStoreError
from model_store.faults import crash_point
from model_store.fsutil import private_temp_dir, remove_abandoned
from model_store.manifest import (
    DecisionSpec,
    Lineage,
    Manifest,
    MonitoringSpec,
    ParitySpec,
    ReferenceImage,
)
from model_store.parity import parity_ok
from model_store.predictor import Predictor
from model_store.preprocessing import Preprocessor
from model_store.writer import ReferenceInput, current_environment, write_bundle
from training.checkpoint import load_checkpoint
from training.config import TrainConfig, config_from_run
from training.data import SplitManifest, check_matches, summary

EXPORT_PREFIX = ".export-"


class ExportError(Exception):
    """The run cannot be exported as it is; the message says why."""


def choose_references(config: TrainConfig, test_predictions: list[dict[str, Any]], threshold: float) -> list[str]:
    """Paths of the reference images: per class the first N by path, then the hardest."""
    chosen: list[str] = []
    for label in (config.decision.negative_label, config.decision.positive_label):
        of_label = sorted(r["path"] for r in test_predictions if r["label"] == label)
        chosen += of_label[: config.export.references_per_class]
    rest = sorted(
        (r for r in test_predictions if r["path"] not in chosen),
        key=lambda r: (abs(r["probability"] - threshold), r["path"]),
    )
    chosen += [r["path"] for r in rest[: config.export.hard_references]]
    return chosen


def _manifest(
    config: TrainConfig, run_dir: Path, version: str, evaluation: dict[str, Any], split: SplitManifest
) -> Manifest:
    meta = json.loads((run_dir / "run.json").read_text())
    positive = config.decision.positive_label
    val = evaluation["predictions"]["val"]
    scores = {"logits": [r["logit"] for r in val], "labels": [int(r["label"] == positive) for r in val]}
    placeholder = ReferenceImage(file="pending", sha256="0" * 64, expected_probability=0, expected_decision="")
    return Manifest(
        name=config.export.name,
        version=version,
        created_at=datetime.now(UTC),
        model=config.model.spec(),
        preprocessing=config.preprocessing,
        runtime=config.runtime,
        # As training decided it (training.operating_point), with the validation scores that let
        # `redecide` choose another operating point later without retraining.
        decision=DecisionSpec.model_validate({**evaluation["decision"], "validation_scores": scores}),
        lineage=Lineage(
            config=config.model_dump(mode="json"),
            config_sha256=config.sha256,
            split_manifest_sha256=split.sha256,
            dataset_fingerprint=split.fingerprint,
            seed=config.seed,
            epoch=evaluation["best_epoch"],
            checkpoint_sha256=evaluation["checkpoint_sha256"],
            code_revision=meta["code_revision"],
            split_counts=summary(split),
        ),
        environment=current_environment(meta.get("device", "unknown")),  # runs before 0.2 did not record it
        weights_sha256="0" * 64,
        parity=ParitySpec(tolerance=config.export.parity_tolerance, references=[placeholder]),
    )


def monitoring_reference(
    config: TrainConfig, manifest: Manifest, evaluation: dict[str, Any], data_dir: Path
) -> MonitoringSpec:
    """What live traffic is compared with: the validation split through the service's own
    path (header check, decode, crop, features) and its scores as the bundle serves them."""
    pre = Preprocessor(manifest.preprocessing)
    rows, labels, measured = [], [], []
    for r in evaluation["predictions"]["val"]:
        data = (data_dir / r["path"]).read_bytes()
        info = pre.inspect(data)
        _, stats = pre.prepare(data, mon.STATS_STRIDE)
        rows.append(mon.features(stats, info.width, info.height, r["probability"]))
        measured.append(domain.measures(stats, info.width, info.height))
        labels.append(int(r["label"] == config.decision.positive_label))
    spec = mon.reference(rows, labels, manifest.decision)
    return spec.model_copy(update={"domain": domain.fit(measured)})


def retake_reasons(spec: MonitoringSpec, pre: Preprocessor, paths: list[Path]) -> dict[Path, str]:
    """The images of `paths` the bundle would answer `retake`, with the reason."""
    out: dict[Path, str] = {}
    if spec.domain is None:
        return out
    for path in paths:
        data = path.read_bytes()
        info = pre.inspect(data)
        _, stats = pre.prepare(data, spec.stats_stride)
        why = domain.reason(spec.domain, domain.measures(stats, info.width, info.height))
        if why is not None:
            out[path] = why.reason
    return out


def check_against_training(bundle: Bundle, data_dir: Path, evaluation: dict[str, Any], batch_size: int) -> float:
    """Max abs difference between the bundle's and training's test-split probabilities."""
    predictor = Predictor(bundle)
    rows = evaluation["predictions"]["test"]
    tol = bundle.manifest.parity.tolerance
    worst = 0.0
    outputs = predictor.predict_files([data_dir / r["path"] for r in rows], batch_size)  # training's batches
    for r, o in zip(rows, outputs, strict=True):
        worst = max(worst, abs(o.probability - r["probability"]))
        if not parity_ok(
            r["probability"], o.probability, tolerance=tol, threshold=predictor.threshold, decide=predictor.decide
        ):
            raise ExportError(
                f"the exported bundle disagrees with training on {r['path']}: "
                f"{o.probability:.6f} vs {r['probability']:.6f} (tolerance {tol:g})"
            )
    return worst


def export_run(
    run_dir: Path, private_key: Path, version: str, out: Path, data_dir: Path | None = None
) -> tuple[Bundle, float]:
    """Write the bundle to `out`; returns it and the max abs diff against training."""
    run_dir = Path(run_dir)
    config = config_from_run(run_dir)
    try:
        evaluation = json.loads((run_dir / "eval.json").read_text())
    except FileNotFoundError:
        raise ExportError(f"{run_dir} has no eval.json: the run has not finished training") from None
    split = SplitManifest.from_json_bytes((run_dir / "split.json").read_bytes())
    data_dir = Path(data_dir or json.loads((run_dir / "run.json").read_text())["data_dir"])
    check_matches(split, data_dir)
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    if ckpt["epoch"] != evaluation["best_epoch"]:
        raise ExportError("checkpoints/best.pt is not the checkpoint eval.json describes")

    manifest = _manifest(config, run_dir, version, evaluation, split)
    monitoring = monitoring_reference(config, manifest, evaluation, data_dir)
    manifest = manifest.model_copy(update={"monitoring": monitoring})
    # A reference image is one the bundle judges: test images it would send back for a
    # retake are not expectations of a verdict (they are counted and printed by the CLI).
    test = evaluation["predictions"]["test"]
    retakes = retake_reasons(monitoring, Preprocessor(manifest.preprocessing), [data_dir / r["path"] for r in test])
    judged = [r for r in test if data_dir / r["path"] not in retakes]
    if monitoring.domain is not None:
        measured = monitoring.domain.model_copy(update={"test_images": len(test), "test_retakes": len(retakes)})
        manifest = manifest.model_copy(update={"monitoring": monitoring.model_copy(update={"domain": measured})})
    paths = choose_references(config, judged, evaluation["threshold"])
    label_of = {i.path: i.label for i in split.items}
    refs = [
        ReferenceInput(f"{i:02d}-{label_of[p]}{Path(p).suffix.lower()}", (data_dir / p).read_bytes(), label_of[p])
        for i, p in enumerate(paths)
    ]
    try:
        bundle = write_bundle(Path(out), manifest, ckpt["model"], refs, private_key)
    except ModelStoreError as exc:
        raise ExportError(str(exc)) from None
    try:
        diff = check_against_training(bundle, data_dir, evaluation, config.optim.batch_size)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return bundle, diff


def export_to_store(
    run_dir: Path,
    private_key: Path,
    version: str,
    store: Path,
    public_key: Path,
    actor: str,
    data_dir: Path | None = None,
) -> tuple[Bundle, float]:
    from model_store.store import open_store

    # The bundle is written beside the store (same filesystem: the import copies it once),
    # in a folder of this process; what a killed export left there is removed first.
    parent = Path(store).resolve().parent
    remove_abandoned(parent, EXPORT_PREFIX)
    tmp = private_temp_dir(parent, EXPORT_PREFIX)
    try:
        bundle, diff = export_run(run_dir, private_key, version, tmp / version, data_dir)
        crash_point("export.written")
        open_store(store, public_key).import_bundle(bundle.path, actor=actor, reason=f"export of {run_dir}")
        crash_point("export.imported")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return bundle, diff
