"""Architectures a bundle may name, built from its manifest's `model` section.

Only torchvision constructors with `weights=None`: building a model never downloads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import torchvision
from torch import nn

from model_store.errors import ManifestInvalid
from model_store.manifest import Architecture, ModelSpec

ARCHITECTURES: tuple[str, ...] = get_args(Architecture)  # declared once, in the manifest schema


@dataclass(frozen=True)
class ZooEntry:
    """What the code needs to know about an architecture beyond its constructor."""

    # The last convolutional block: its output is the final spatial feature map, where
    # Grad-CAM looks (`model_store.explain`). A submodule path (`nn.Module.get_submodule`).
    last_conv_block: str


ZOO: dict[str, ZooEntry] = {
    "mobilenet_v3_small": ZooEntry(last_conv_block="features.12"),  # 1x1 conv to 576 channels, stride 32
    "resnet18": ZooEntry(last_conv_block="layer4"),  # two basic blocks, 512 channels, stride 32
    "efficientnet_b0": ZooEntry(last_conv_block="features.8"),  # 1x1 conv to 1280 channels, stride 32
}


def zoo_entry(architecture: str) -> ZooEntry:
    entry = ZOO.get(architecture)
    if entry is None:
        raise ManifestInvalid(f"unknown architecture {architecture!r}; known: {ARCHITECTURES}")
    return entry


def last_conv_block(model: nn.Module, architecture: str) -> nn.Module:
    """The module whose output Grad-CAM weighs, in a model `build_model` made."""
    return model.get_submodule(zoo_entry(architecture).last_conv_block)


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
