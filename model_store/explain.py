"""Where the evidence for the positive label lies in one image: a heatmap from the served model.

The service's `POST /v1/explain` (in its inference workers), `python -m training compare`
and the pointing-accuracy measurement (`training.explain`) all call `explain` with a
`Predictor`, so the heatmap an inspector sees is the one that was measured; the training
report, which runs before there is a bundle, calls `explain_model` with the checkpoint's
model, the same heatmap code.

- **The probability is the served one.** It comes from `Predictor.probabilities` on the
  image's served tensor, the very call `/v1/predict` makes, so it equals predict's for a
  request of one image bit for bit. The heatmap is computed apart from it.
- **Methods** (`METHODS`), chosen by measurement (docs/explanations.md):
  - `occlusion`: a grey square (the data's mean colour) slides over the model's input in a
    7 x 7 lattice of positions (side crop/4, stride crop/8); a cell of the 8 x 8 lattice
    they cover gets the mean drop of the damage logit over the squares covering it, and
    the map is that, bilinear at the input's pixels. 49 batched forwards of the served
    (fused) graph: no gradients, one number per position that a person can check by
    covering the spot themselves.
  - `gradcam`: Grad-CAM on the architecture's last convolutional block (a property of its
    zoo entry): one forward and one backward through the unfused eval model with gradients
    on. About 3 forwards, but the map is the block's grid: 4 x 4 at a 128 px crop.
- **Coordinates.** The heatmap covers the model's input, the centre crop of the resized
  image. `Explanation` places it back on the image as sent (after its EXIF orientation):
  `seen` is the crop's box there, and `grid` reads it as a coarse grid over the whole image
  whose cells outside the box are None (the model never saw them).
- **Relative values.** Heat is scaled so the strongest evidence in the image is 1; an
  image with none (nothing raises the damage score) is all 0. Read it with the decision:
  an intact parcel's map shows where the little evidence there is lies, not damage.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from model_store.errors import ImageError
from model_store.predictor import Predictor
from model_store.preprocessing import ImageInfo, Preprocessor, decode
from model_store.zoo import last_conv_block

Method = Literal["occlusion", "gradcam"]
METHODS: tuple[Method, ...] = ("occlusion", "gradcam")
DEFAULT_METHOD: Method = "occlusion"  # docs/explanations.md: the measurement behind the choice

OCCLUSION_STEPS = 7  # positions per axis: squares of side crop/4 every crop/8 (2 x 2 cells of 8 x 8)
OCCLUSION_BATCH = 16  # occluded copies per forward pass (memory: 16 inputs at a time)
GRID_CELLS = 8  # cells along the image's longer side; the shorter side gets as many as keep them square
OVERLAY_MAX_SIDE = 512  # pixels, the overlay's longer side at most


def forwards(method: Method) -> int:
    """What one explanation costs, in forward passes of one image: what admission counts."""
    if method == "occlusion":
        return 1 + OCCLUSION_STEPS**2  # the served forward, then one per occluded copy
    return 1 + 3  # the served forward, then a forward and a backward (about twice a forward)


@dataclass(frozen=True)
class Explanation:
    """One image's served score and where its evidence lies."""

    probability: float  # exactly what predict answers for this image alone
    decision: str
    method: Method
    heatmap: np.ndarray  # float32 [crop, crop] over the model's input, 0..1
    width: int  # the image as sent, after its EXIF orientation, in pixels
    height: int
    seen: tuple[float, float, float, float]  # the model's input in those pixels: left, top, right, bottom

    def peak(self) -> tuple[float, float]:
        """(x, y) in the image's pixels of the heatmap's maximum (the centre of its pixel)."""
        row, col = np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape)
        left, top, right, bottom = self.seen
        side = self.heatmap.shape[0]
        return left + (col + 0.5) * (right - left) / side, top + (row + 0.5) * (bottom - top) / side

    def grid_shape(self, cells: int = GRID_CELLS) -> tuple[int, int]:
        """(rows, columns): `cells` along the longer side, about square cells."""
        if self.width >= self.height:
            return max(1, round(cells * self.height / self.width)), cells
        return cells, max(1, round(cells * self.width / self.height))

    def grid(self, cells: int = GRID_CELLS) -> list[list[float | None]]:
        """The heatmap as a coarse grid over the whole image (rows top to bottom): each cell
        the mean heat of the part of it the model saw, scaled so the hottest cell is 1; None
        for a cell wholly outside the model's input (cropped away)."""
        rows, cols = self.grid_shape(cells)
        left, top, right, bottom = self.seen
        side = self.heatmap.shape[0]
        out: list[list[float | None]] = []
        for r in range(rows):
            line: list[float | None] = []
            for c in range(cols):
                # The cell in heatmap pixels, clipped to the heatmap.
                x0 = (c * self.width / cols - left) / (right - left) * side
                x1 = ((c + 1) * self.width / cols - left) / (right - left) * side
                y0 = (r * self.height / rows - top) / (bottom - top) * side
                y1 = ((r + 1) * self.height / rows - top) / (bottom - top) * side
                i0, i1 = max(0, math.floor(y0)), min(side, math.ceil(y1))
                j0, j1 = max(0, math.floor(x0)), min(side, math.ceil(x1))
                line.append(float(self.heatmap[i0:i1, j0:j1].mean()) if i1 > i0 and j1 > j0 else None)
            out.append(line)
        top_value = max((v for line in out for v in line if v is not None), default=0.0)
        if top_value > 0:
            out = [[None if v is None else round(v / top_value, 4) for v in line] for line in out]
        return out


@dataclass(frozen=True)
class _Model:
    """What a heatmap needs of a model: its logits on a batch (fast, no gradients: the served
    graph where there is one) and the module as built, where gradients can be taken."""

    logits: Callable[[torch.Tensor], torch.Tensor]  # [N, 3, H, W] -> [N] float32 on the CPU
    module: nn.Module
    architecture: str
    layout: Callable[[torch.Tensor], torch.Tensor]  # onto the module's device and memory format


def explain(predictor: Predictor, data: bytes, method: Method = DEFAULT_METHOD) -> Explanation:
    """The served probability and decision of `data`, and its heatmap by `method`.

    Raises ImageError on bad input (the same refusals as predict).
    """
    pre = predictor.preprocessor
    image = pre.decode(data)
    x = pre.transform(image)[None]
    probability = predictor.probabilities(x)[0]  # the served forward, as predict runs it
    sign = 1.0 if predictor.manifest.decision.logit_map()[0] >= 0 else -1.0  # the damage direction
    model = _Model(predictor.logits, predictor.model, predictor.manifest.model.architecture, predictor.layout)
    heat = _heatmap(model, x, sign, method)
    return _placed(pre, data, image, heat, probability, predictor.decide(probability), method)


def explain_model(
    model: nn.Module,
    architecture: str,
    preprocessor: Preprocessor,
    data: bytes,
    *,
    probability: float,
    decision: str,
    method: Method = DEFAULT_METHOD,
) -> Explanation:
    """`explain` for a model that is not in a bundle yet (the training report, before export):
    the probability and decision are the caller's (the served ones it computed)."""
    device = next(model.parameters()).device

    def logits(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = model(batch.to(device))[:, 0].float().cpu()
            return out

    image = preprocessor.decode(data)
    x = preprocessor.transform(image)[None]
    heat = _heatmap(_Model(logits, model, architecture, lambda b: b.to(device)), x, 1.0, method)
    return _placed(preprocessor, data, image, heat, probability, decision, method)


def _heatmap(model: _Model, x: torch.Tensor, sign: float, method: Method) -> np.ndarray:
    heat = _occlusion(model, x, sign) if method == "occlusion" else _gradcam(model, x, sign)
    peak = float(heat.max())
    return heat / peak if peak > 0 else np.zeros_like(heat)


def _placed(
    pre: Preprocessor,
    data: bytes,
    image: Image.Image,
    heat: np.ndarray,
    probability: float,
    decision: str,
    method: Method,
) -> Explanation:
    """The heatmap placed on the image as sent: its size and where the model's input lies in it."""
    width, height = _as_sent(pre.inspect(data), image)
    left, top, right, bottom = pre.crop_box(*image.size)
    sx, sy = width / image.width, height / image.height  # a DCT-scaled decode is smaller than sent
    box = (left * sx, top * sy, right * sx, bottom * sy)
    return Explanation(probability, decision, method, heat.astype(np.float32), width, height, box)


def _as_sent(info: ImageInfo, decoded: Image.Image) -> tuple[int, int]:
    """The image's size as sent, turned by its EXIF orientation as the decode turned it: the
    header's size, swapped where the decoded picture lies the other way."""
    width, height = info.width, info.height
    if decoded.width != decoded.height and (decoded.width > decoded.height) != (width > height):
        return height, width
    return width, height


def _occlusion(model: _Model, x: torch.Tensor, sign: float) -> np.ndarray:
    side = x.shape[-1]
    stride = max(1, side // (OCCLUSION_STEPS + 1))
    patch = 2 * stride  # each square covers 2 x 2 cells of a lattice of (steps + 1)^2
    cells = OCCLUSION_STEPS + 1
    positions = [(r, c) for r in range(OCCLUSION_STEPS) for c in range(OCCLUSION_STEPS)]
    base = float(model.logits(x)[0])
    drops: list[float] = []
    for k in range(0, len(positions), OCCLUSION_BATCH):
        chunk = positions[k : k + OCCLUSION_BATCH]
        batch = x.repeat(len(chunk), 1, 1, 1)
        for n, (r, c) in enumerate(chunk):
            # 0 after normalising: the data's mean colour
            batch[n, :, r * stride : r * stride + patch, c * stride : c * stride + patch] = 0.0
        drops.extend(sign * (base - float(v)) for v in model.logits(batch))
    # Per cell, the mean drop of the squares that cover it; only what covering lowers counts
    # (evidence for damage). Then bilinear to the input's pixels: a smooth map whose maximum
    # is a cell's centre, not the corner of a plateau.
    heat = np.zeros((cells, cells), dtype=np.float64)
    count = np.zeros((cells, cells), dtype=np.float64)
    for (r, c), drop in zip(positions, drops, strict=True):
        heat[r : r + 2, c : c + 2] += max(drop, 0.0)
        count[r : r + 2, c : c + 2] += 1
    heat /= count
    # The lattice spans cells * stride pixels; a remainder (side not a multiple) is stretched over.
    return _upsample(heat, side)


def _upsample(grid: np.ndarray, side: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None, None]
    up: np.ndarray = torch.nn.functional.interpolate(t, size=(side, side), mode="bilinear")[0, 0].numpy()
    return up.astype(np.float64)


def _gradcam(model: _Model, x: torch.Tensor, sign: float) -> np.ndarray:
    module = model.module  # as built: the fused graph has no blocks to hook
    layer = last_conv_block(module, model.architecture)
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        # Gradients on here only: the served forward ran in inference mode, as predict's does.
        with torch.inference_mode(False), torch.enable_grad():
            logit = module(model.layout(x))[0, 0] * sign
            (grad,) = torch.autograd.grad(logit, captured[0])
    finally:
        hook.remove()
    activation = captured[0].detach()[0]
    weights = grad[0].mean(dim=(1, 2))  # one weight per channel: its mean gradient
    cam = torch.relu((weights[:, None, None] * activation).sum(0))
    return _upsample(cam.float().cpu().numpy(), x.shape[-1])


def overlay_png(
    preprocessor: Preprocessor, data: bytes, explanation: Explanation, max_side: int = OVERLAY_MAX_SIDE
) -> bytes:
    """The image as sent (at most `max_side` pixels on its longer side) with the heat drawn
    over it, red to yellow; what the model never saw is darkened. PNG bytes."""
    pre = preprocessor
    try:
        # Decoded again at overlay size: the served decode may be a 1/8 DCT-scaled thumbnail.
        spec = pre.spec
        picture = decode(data, pre.limits, exif=spec.exif_orientation, resize=max_side, jpeg_dct_scaling=True)
    except ImageError:  # an aspect ratio the larger size would refuse: the served decode will do
        picture = pre.decode(data)
    picture.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return _blend(picture, explanation)


def _blend(picture: Image.Image, explanation: Explanation) -> bytes:
    w, h = picture.size
    fx, fy = w / explanation.width, h / explanation.height
    left, top, right, bottom = explanation.seen
    box = (round(left * fx), round(top * fy), round(right * fx), round(bottom * fy))
    bw, bh = max(1, box[2] - box[0]), max(1, box[3] - box[1])
    heat = np.zeros((h, w), dtype=np.float32)
    scaled = Image.fromarray(explanation.heatmap.astype(np.float32), "F").resize((bw, bh), Image.Resampling.BILINEAR)
    x0, y0 = max(0, box[0]), max(0, box[1])
    x1, y1 = min(w, box[0] + bw), min(h, box[1] + bh)
    heat[y0:y1, x0:x1] = np.asarray(scaled)[y0 - box[1] : y1 - box[1], x0 - box[0] : x1 - box[0]]
    heat = np.clip(heat, 0.0, 1.0)
    rgb = np.asarray(picture.convert("RGB"), dtype=np.float32)
    seen = np.zeros((h, w), dtype=bool)
    seen[y0:y1, x0:x1] = True
    rgb[~seen] *= 0.4  # cropped away: never seen by the model
    colour = np.stack([np.full_like(heat, 255.0), 255.0 * heat, np.zeros_like(heat)], axis=-1)  # red -> yellow
    alpha = (0.65 * heat)[..., None]
    out = rgb * (1 - alpha) + colour * alpha
    # 256 colours (fast octree): a fifth of the bytes of a full-colour PNG of a noisy photo,
    # and a sixth of its encoding time (512 x 384: ~60 KB, ~15 ms instead of ~280 KB, ~100 ms).
    picture = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB").quantize(256, Image.Quantize.FASTOCTREE)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()
