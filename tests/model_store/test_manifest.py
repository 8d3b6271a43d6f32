"""Schema versions: bundles written by the first release are still served exactly as they say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_store.bundle import load_bundle
from model_store.errors import ManifestInvalid
from model_store.manifest import parse_manifest
from model_store.predictor import Predictor
from model_store.writer import write_bundle
from tests.utils.factories import draft_manifest, model_state, references


def test_a_schema_1_bundle_loads_and_passes_parity_without_the_newer_features(tmp_path: Path, keys) -> None:
    v1 = draft_manifest("old-1").model_copy(update={"schema_version": 1})
    bundle = write_bundle(tmp_path / "old", v1, model_state(), references(), keys[0])
    stored = json.loads((bundle.path / "manifest.json").read_text())
    loaded = load_bundle(bundle.path, keys[1])
    assert stored["schema_version"] == loaded.manifest.schema_version == 1
    assert loaded.manifest.preprocessing.jpeg_dct_scaling is False  # decoded at full size, as it was validated
    assert loaded.manifest.runtime.graph == "eager"
    assert Predictor(loaded).check_parity().passed


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("preprocessing", "jpeg_dct_scaling"), True),
        (("runtime", "graph"), "fused"),
        (("decision", "warnings"), ["the test split holds 4 intact and 4 damaged images"]),
        (("lineage", "split_counts"), {"test": {"intact": 4, "damaged": 4}}),
    ],
)
def test_a_schema_1_manifest_cannot_claim_schema_2_features(path: tuple[str, str], value: object) -> None:
    data = json.loads(draft_manifest().to_json_bytes())
    data["schema_version"] = 1
    data.setdefault(path[0], {})[path[1]] = value
    with pytest.raises(ManifestInvalid, match="need schema_version 2"):
        parse_manifest(json.dumps(data).encode())


def test_unknown_schema_versions_are_refused_by_name() -> None:
    data = json.loads(draft_manifest().to_json_bytes())
    data["schema_version"] = 3
    with pytest.raises(ManifestInvalid, match="schema_version is 3, this code reads 1 and 2"):
        parse_manifest(json.dumps(data).encode())


def test_a_manifest_from_before_the_optional_honesty_fields_still_loads() -> None:
    """Intervals, warnings, split counts and the calibration note are optional: a schema 2
    manifest written before them (no such keys at all) parses, with empty defaults."""
    data = json.loads(draft_manifest().to_json_bytes())
    data["decision"].pop("warnings")
    data["decision"]["calibration"].pop("note")
    data["lineage"].pop("split_counts")
    if data["decision"].get("validation"):
        for key in ("positives", "damage_rate", "roc_auc", "ece", "intervals"):
            data["decision"]["validation"].pop(key)
    m = parse_manifest(json.dumps(data).encode())
    assert m.decision.warnings == [] and m.lineage.split_counts is None and m.decision.calibration.note is None
