"""Write the benchmark's weights as a plain state dict for the TorchServe handler.

Run with the project's virtualenv from the repository root (prepare.sh does):

    .venv/bin/python benchmarks/peers/torchserve/export_weights.py OUT_DIR

It builds the bundle exactly as `python -m benchmarks` does (`service.make_bundle` on the
same 64 camera-like JPEGs, seed 0, batch-norm recalibrated with the default DCT decode),
then writes into OUT_DIR:

- `weights.pt`: that bundle's state dict (torch.save, loaded with weights_only=True);
- `images/00.jpg` ... `images/07.jpg`: a few of the benchmark's JPEGs, for curl;
- `expected.json`: {file: probability} for those images through the handler's own path
  (full-size PIL decode, torchvision Resize/CenterCrop/ToTensor/Normalize, eager model),
  so a TorchServe answer can be checked number for number.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms

from benchmarks import service
from benchmarks.images import camera_jpegs
from model_store.bundle import WEIGHTS_FILE
from model_store.manifest import RuntimeSpec


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    images = camera_jpegs(64)
    with tempfile.TemporaryDirectory(prefix="ts-export-") as tmp:
        # The runtime only says how our service runs the forward pass; the weights are the same.
        bundle, _, _ = service.make_bundle(Path(tmp), images, jpeg_dct_scaling=True, runtime=RuntimeSpec())
        state = load_file(str(bundle / WEIGHTS_FILE))
    torch.save(state, out / "weights.pt")

    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=1)
    model.load_state_dict(state)
    model.eval()
    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    (out / "images").mkdir(exist_ok=True)
    expected = {}
    for i in range(8):
        name = f"{i:02d}.jpg"
        (out / "images" / name).write_bytes(images[i])
        x = transform(Image.open(io.BytesIO(images[i])).convert("RGB")).unsqueeze(0)
        with torch.inference_mode():
            expected[name] = float(torch.sigmoid(model(x))[0, 0])
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    sys.stderr.write(f"wrote {out}/weights.pt, images/, expected.json\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.stderr.write(__doc__ or "")
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1])))
