"""Write a signed bundle whose parity expectations come from the serving `Predictor`.

This sits above `predictor` (which reads bundles) so that nothing below it needs the
model code: `bundle` reads, `predictor` serves, `writer` uses both.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import PIL
import torch
import torchvision
from safetensors.torch import save as save_safetensors

from model_store.bundle import MANIFEST_FILE, REFERENCE_DIR, WEIGHTS_FILE, Bundle, load_bundle
from model_store.errors import BundleError
from model_store.faults import crash_point
from model_store.fsutil import private_temp_dir, remove_abandoned
from model_store.manifest import (
    DecisionSpec,
    Environment,
    Lineage,
    Manifest,
    ModelSpec,
    ParitySpec,
    PreprocessingSpec,
    ReferenceImage,
    RuntimeSpec,
    parse_manifest,
    sha256_bytes,
)
from model_store.predictor import SERVING_THREADS, Predictor, torch_threads
from model_store.signing import public_key_file, sign_directory


@dataclass(frozen=True)
class ReferenceInput:
    """An image to store in `reference/` for parity; outputs are computed at write time."""

    file: str
    data: bytes
    label: str | None = None


def current_environment(device: str) -> Environment:
    return Environment(
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        pillow=PIL.__version__,
        device=device,
    )


ZERO_SHA = "0" * 64


def hand_made_manifest(
    name: str,
    version: str,
    *,
    model: ModelSpec,
    preprocessing: PreprocessingSpec,
    runtime: RuntimeSpec | None = None,
    threshold: float = 0.5,
    origin: str,
) -> Manifest:
    """A draft manifest for a bundle made without a training run (tests, benchmarks, the
    image's smoke check): a fixed threshold, lineage that says where it came from, zero
    digests that `write_bundle` fills in."""
    config = {"origin": origin}
    return Manifest(
        name=name,
        version=version,
        created_at=datetime.now(UTC),
        model=model,
        preprocessing=preprocessing,
        runtime=runtime or RuntimeSpec(),
        decision=DecisionSpec(threshold=threshold, cost_false_alarm=1.0, cost_miss=5.0, method="fixed"),
        lineage=Lineage(
            config=config,
            config_sha256=sha256_bytes(json.dumps(config, sort_keys=True).encode()),
            split_manifest_sha256=ZERO_SHA,
            dataset_fingerprint=ZERO_SHA,
            seed=0,
            epoch=0,
            checkpoint_sha256=ZERO_SHA,
            code_revision=origin,
        ),
        environment=current_environment("cpu"),
        weights_sha256=ZERO_SHA,
        parity=ParitySpec(
            tolerance=1e-4,
            references=[ReferenceImage(file="pending", sha256=ZERO_SHA, expected_probability=0, expected_decision="")],
        ),
    )


def write_bundle(
    out_dir: Path,
    manifest: Manifest,
    state_dict: Mapping[str, torch.Tensor] | bytes,
    references: Sequence[ReferenceInput],
    private_key: Path,
) -> Bundle:
    """Write, sign and verify a bundle; return it as `load_bundle` reads it back.

    `state_dict` may be the safetensors bytes of another bundle, kept byte for byte (a
    re-decided bundle carries its parent's weights, with the same digest).

    `manifest.parity.references` and `weights_sha256` are filled in here: the expected
    outputs are computed by reloading the signed draft through the serving `Predictor`,
    then the final manifest is signed and parity re-checked on the final bundle.

    The bundle appears at `out_dir` only once complete; `out_dir` must not exist.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise BundleError(f"{out_dir} already exists; refusing to overwrite a bundle")
    if not references:
        raise BundleError("a bundle needs at least one reference image for parity")
    if isinstance(state_dict, bytes):
        weights = state_dict
    else:
        weights = save_safetensors({k: v.detach().cpu().contiguous() for k, v in state_dict.items()})

    # Work happens in `.NAME.PID-*` beside the bundle, renamed into place once complete;
    # what a killed writer left there is removed first.
    remove_abandoned(out_dir.parent, f".{out_dir.name}.")
    staging = private_temp_dir(out_dir.parent, f".{out_dir.name}.")
    os.chmod(staging, 0o755)  # mkdtemp makes 0700; a bundle is meant to be shared
    public_key = public_key_file(private_key, staging.with_name(staging.name + ".pub.pem"))
    try:
        (staging / WEIGHTS_FILE).write_bytes(weights)
        (staging / REFERENCE_DIR).mkdir()
        draft_refs = []
        for ref in references:
            (staging / REFERENCE_DIR / ref.file).write_bytes(ref.data)
            draft_refs.append(
                ReferenceImage(
                    file=ref.file,
                    sha256=sha256_bytes(ref.data),
                    label=ref.label,
                    expected_probability=0.0,
                    expected_decision="",
                )
            )
        draft = manifest.model_copy(
            update={
                "weights_sha256": sha256_bytes(weights),
                "parity": ParitySpec(tolerance=manifest.parity.tolerance, references=draft_refs),
            }
        )
        draft = parse_manifest(draft.to_json_bytes())  # re-validate what we are about to sign
        _write_and_sign(staging, draft, private_key)
        crash_point("bundle.draft_signed")

        predictor = Predictor(load_bundle(staging, public_key), device="cpu")
        with torch_threads(SERVING_THREADS):
            outputs = predictor.predict([ref.data for ref in references])
        final_refs = [
            r.model_copy(update={"expected_probability": o.probability, "expected_decision": o.decision})
            for r, o in zip(draft_refs, outputs, strict=True)
        ]
        final = parse_manifest(
            draft.model_copy(
                update={"parity": ParitySpec(tolerance=draft.parity.tolerance, references=final_refs)}
            ).to_json_bytes()
        )
        _write_and_sign(staging, final, private_key)

        bundle = load_bundle(staging, public_key)
        Predictor(bundle, device="cpu").check_parity().require_pass()
        crash_point("bundle.final_signed")
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        public_key.unlink(missing_ok=True)
    return replace(bundle, path=out_dir)


def _write_and_sign(staging: Path, manifest: Manifest, private_key: Path) -> None:
    (staging / MANIFEST_FILE).write_bytes(manifest.to_json_bytes())
    sign_directory(staging, private_key)
