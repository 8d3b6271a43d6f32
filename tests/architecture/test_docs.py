"""Docs a test keeps true: the README's bundle table names every manifest field."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from model_store.manifest import Manifest

ROOT = Path(__file__).resolve().parents[2]


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (through Optional, list, dict, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def manifest_fields(model: type[BaseModel] = Manifest) -> set[str]:
    names = set()
    for name, info in model.model_fields.items():
        names.add(name)
        for sub in _models_in(info.annotation):
            names |= manifest_fields(sub)
    return names


def bundle_table() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The bundle") :]
    return section[: section.index("\n## ", 1)]


def test_the_readme_bundle_table_names_every_manifest_field() -> None:
    documented = set(re.findall(r"`([a-z_0-9]+)`", bundle_table()))
    missing = sorted(manifest_fields() - documented)
    assert not missing, f"manifest fields missing from the README's bundle section: {missing}"


def test_the_field_walk_sees_nested_sections() -> None:
    """The check above would pass vacuously if the walk stopped at the top level."""
    fields = manifest_fields()
    assert {"stats_stride", "intercept", "parent_manifest_sha256", "expected_probability", "cuts"} <= fields
