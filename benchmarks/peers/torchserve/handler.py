"""TorchServe custom handler: the benchmark's mobilenet_v3_small, as a TorchServe user writes it.

Runs inside TorchServe's Python worker (the TorchServe virtualenv, not the project's):
the archive holds this file and `weights.pt`, a plain state dict written by
`export_weights.py`. Per request body: full-size PIL decode, resize 256 (bilinear),
centre crop 224, ToTensor, ImageNet Normalize; the batch (1 image, or up to batch_size
when TorchServe batches) goes through the eager torchvision module in eval mode under
`torch.inference_mode`, and each image gets {"probability": sigmoid(logit)}.

One torch thread per worker: TorchServe workers are processes, as ours are.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Any

import torch
import torchvision
from PIL import Image
from torchvision import transforms
from ts.torch_handler.base_handler import BaseHandler  # type: ignore[import-not-found]

logger = logging.getLogger(__name__)

WEIGHTS = "weights.pt"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class MobileNetHandler(BaseHandler):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.transform = transforms.Compose(
            [
                transforms.Resize(256),  # shorter side to 256, bilinear with antialias, as torchvision defaults
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
            ]
        )

    def initialize(self, context: Any) -> None:
        threads = int(os.environ.get("TS_BENCH_TORCH_THREADS", "1"))
        torch.set_num_threads(threads)
        # Only allowed before the first parallel work; harmless if too late.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        self.context = context
        self.manifest = context.manifest
        model_dir = context.system_properties.get("model_dir")
        self.device = torch.device("cpu")
        self.map_location = "cpu"
        model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=1)
        state = torch.load(os.path.join(model_dir, WEIGHTS), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval()
        self.model = model
        self.initialized = True
        logger.info("mobilenet_v3_small loaded from %s; torch threads %d", WEIGHTS, torch.get_num_threads())

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        images = []
        for row in data:
            body = row.get("data") or row.get("body")
            if not isinstance(body, (bytes, bytearray)):
                raise ValueError("send the JPEG as the raw request body")
            # Decoded at full size by Resize, as TorchServe's image_classifier does.
            img: Image.Image = Image.open(io.BytesIO(body))
            if img.mode != "RGB":
                img = img.convert("RGB")
            images.append(self.transform(img))
        return torch.stack(images)

    def inference(self, data: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = self.model(data)
        return out

    def postprocess(self, data: torch.Tensor) -> list[dict[str, float]]:
        return [{"probability": float(p)} for p in torch.sigmoid(data[:, 0]).tolist()]
