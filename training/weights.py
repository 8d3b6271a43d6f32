"""`python -m training weights convert`: a torchvision checkpoint (`.pth`) -> `.safetensors`.

A user downloads ImageNet weights elsewhere (e.g. torchvision's `resnet18-f37072fd.pth`);
training only reads safetensors (`model.pretrained`), which hold tensors and nothing
else. This converts one, reading the pickle with `torch.load(weights_only=True)`, which
refuses any object that is not a tensor or a plain container, so an arbitrary `.pth`
runs no code here. Tensors the architecture has no place for, or whose shape does not fit
(ImageNet's 1000-class head against our one logit), are dropped and named.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from model_store.manifest import ModelSpec
from model_store.zoo import build_model

_WRAPPERS = ("state_dict", "model", "model_state_dict")  # common checkpoint layouts around the weights


class WeightsError(Exception):
    """The checkpoint cannot be converted; the message says why."""


@dataclass(frozen=True)
class Converted:
    kept: int
    expected: int  # tensors in the architecture's state dict
    dropped: list[str]  # in the checkpoint, not usable: "name [shape]"
    missing: list[str]  # in the architecture, not in the checkpoint (start fresh), e.g. the head


def _state_dict(raw: object, src: Path) -> dict[str, torch.Tensor]:
    for key in _WRAPPERS:
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict):
        raise WeightsError(f"{src} holds a {type(raw).__name__}, not a state dict of tensors")
    out = {}
    for name, value in raw.items():
        if isinstance(name, str) and isinstance(value, torch.Tensor):
            out[name.removeprefix("module.")] = value  # saved from DistributedDataParallel
    if not out:
        raise WeightsError(f"{src} holds no tensors")
    return out


def convert(src: Path, out: Path, architecture: str) -> Converted:
    """Write the tensors of `src` that fit `architecture` (one logit) to `out`."""
    src, out = Path(src), Path(out)
    if out.suffix != ".safetensors":
        raise WeightsError(f"the output must be a .safetensors file, not {out.name}")
    try:
        data = src.read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"{src} does not exist") from None
    try:
        raw = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a page with terminal escapes; keep the line naming the object.
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))  # torch names the refused callable or class
        if named:
            raise WeightsError(
                f"{src} holds objects other than tensors and is not unpickled (weights_only): {named.group(1)}"
            ) from None
        raise WeightsError(f"{src} is not a torch checkpoint of tensors (weights_only cannot read it)") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise WeightsError(f"{src} is not a torch checkpoint: {exc}") from None
    given = _state_dict(raw, src)
    own = build_model(ModelSpec.model_validate({"architecture": architecture})).state_dict()
    kept = {k: v.contiguous() for k, v in given.items() if k in own and own[k].shape == v.shape}
    if len(kept) < len(own) // 2:
        raise WeightsError(
            f"{src.name} fits only {len(kept)} of {architecture}'s {len(own)} tensors: "
            f"is it a {architecture} checkpoint?"
        )
    dropped = sorted(f"{k} {list(v.shape)}" for k, v in given.items() if k not in kept)
    missing = sorted(k for k in own if k not in kept)
    metadata = {"architecture": architecture, "source": src.name, "source_sha256": hashlib.sha256(data).hexdigest()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(kept, tmp, metadata=metadata)
    tmp.replace(out)  # never a half-written file under the name a config points at
    return Converted(len(kept), len(own), dropped, missing)
