"""Architectures a bundle may name, built from its manifest's `model` section.

Only torchvision constructors with `weights=None`: building a model never downloads.
"""

from __future__ import annotations

from typing import get_args

import torchvision
from torch import nn

from model_store.errors import ManifestInvalid
from model_store.manifest import Architecture, ModelSpec

ARCHITECTURES: tuple[str, ...] = get_args(Architecture)  # declared once, in the manifest schema


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised model with `spec.num_outputs` logits; load weights after."""
    if spec.architecture not in ARCHITECTURES:
        raise ManifestInvalid(f"unknown architecture {spec.architecture!r}; known: {ARCHITECTURES}")
    try:
        model: nn.Module = torchvision.models.get_model(
            spec.architecture, weights=None, num_classes=spec.num_outputs, **spec.kwargs
        )
    except TypeError as exc:
        raise ManifestInvalid(f"model arguments {spec.kwargs} rejected: {exc}") from None
    return model
