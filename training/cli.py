"""`python -m training`: synth, train, export, evaluate, explain-eval. Exit 0, or 1 with one `error:` line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from model_store.argparsing import ArgumentParser, program
from model_store.manifest import Architecture

if TYPE_CHECKING:
    from model_store.explain import Method

ARCHITECTURES = get_args(Architecture)
EXPLAIN_METHODS: tuple[Method, ...] = ("occlusion", "gradcam")  # model_store.explain.METHODS, torch-free for --help


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=program("training"), description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write the procedural demo data set (ImageFolder layout)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--count", type=int, default=2000)
    s.add_argument("--seed", type=int, default=0)

    t = sub.add_parser("train", help="train a run (also under torchrun for DDP)")
    t.add_argument("--config", type=Path, help="TOML config; defaults apply without one")
    t.add_argument("--data", type=Path, required=True, help="ImageFolder data directory")
    t.add_argument("--run-dir", type=Path, required=True)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    t.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    t.add_argument("--stop-after-epoch", type=int, help="stop cleanly after this epoch (resume later)")
    t.add_argument(
        "--allow-small-data",
        action="store_true",
        help="train although val or test holds fewer than 20 images of a class (figures marked); data.allow_small",
    )

    e = sub.add_parser("export", help="best checkpoint -> signed bundle (directory or store)")
    e.add_argument("--run", type=Path, required=True)
    e.add_argument("--key", type=Path, required=True, help="private signing key PEM")
    e.add_argument("--version", required=True)
    dest = e.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", type=Path, help="write the bundle directory here")
    dest.add_argument("--store", type=Path, help="import the bundle into this store")
    e.add_argument("--public-key", type=Path, help="trusted key the store verifies with (default: the signer's)")
    e.add_argument("--data", type=Path, help="data directory, if it moved since training")

    v = sub.add_parser("evaluate", help="metrics of a bundle on a data set")
    v.add_argument("--bundle", type=Path, required=True)
    v.add_argument("--data", type=Path, required=True)
    v.add_argument("--public-key", type=Path, required=True)
    v.add_argument("--split", choices=["test", "val", "train", "all"], default="test")

    r = sub.add_parser("redecide", help="a new operating point for a bundle, signed, without retraining")
    r.add_argument("--bundle", type=Path, required=True)
    r.add_argument("--key", type=Path, required=True, help="private signing key PEM")
    r.add_argument("--version", required=True, help="version of the new bundle")
    r.add_argument("--out", type=Path, help="write the new bundle here (default: next to --bundle, named --version)")
    r.add_argument("--public-key", type=Path, help="key to verify --bundle with (default: the signer's)")
    r.add_argument("--cost-miss", type=float, help="cost of shipping a damaged parcel")
    r.add_argument("--cost-false-alarm", type=float, help="cost of pulling an intact parcel")
    r.add_argument("--prevalence", type=float, help="share of damaged parcels expected in production, e.g. 0.03")
    r.add_argument("--method", choices=["min_expected_cost", "target_recall"])
    r.add_argument("--target-recall", type=float)

    c = sub.add_parser("compare", help="two bundles on the same images: agreement, flips, scatter (HTML)")
    c.add_argument("--bundle", type=Path, action="append", required=True, help="give it twice: A, then B")
    c.add_argument("--images", type=Path, required=True, help="a folder of images (ImageFolder layout adds metrics)")
    c.add_argument("--public-key", type=Path, required=True)
    c.add_argument("--out", type=Path, default=Path("compare"), help="where compare.html and scatter.png go")

    x = sub.add_parser(
        "explain-eval", help="are the heatmaps right? pointing accuracy against where synth drew the damage"
    )
    x.add_argument("--bundle", type=Path, required=True)
    x.add_argument("--data", type=Path, required=True, help="a data set `synth` made (it records the damage)")
    x.add_argument("--public-key", type=Path, required=True)
    x.add_argument("--split", choices=["test", "val", "train", "all"], default="test")
    x.add_argument("--method", choices=[*EXPLAIN_METHODS, "all"], default="all", help="default: every method")
    x.add_argument("--limit", type=_positive, help="the first N damaged images only (a quicker look)")

    w = sub.add_parser("weights", help="pretrained weights: a torchvision .pth -> the .safetensors a config takes")
    wsub = w.add_subparsers(dest="weights_command", required=True)
    wc = wsub.add_parser("convert", help="IN.pth -> OUT.safetensors (read with weights_only: tensors only)")
    wc.add_argument("src", type=Path, metavar="IN.pth")
    wc.add_argument("out", type=Path, metavar="OUT.safetensors")
    wc.add_argument("--architecture", required=True, choices=ARCHITECTURES)

    d = sub.add_parser("dataset", help="labelled production feedback -> an ImageFolder data set train accepts")
    d.add_argument("--from-feedback", required=True, metavar="CAPTURE", help="capture store: a directory or s3:// URL")
    d.add_argument("--out", type=Path, required=True)
    return p


def run(args: argparse.Namespace) -> int:
    if args.command == "synth":
        from training.synth import generate

        start = time.perf_counter()
        step = max(1, args.count // 10)

        def written(done: int, count: int) -> None:  # 2,000 photos take a minute or two on 2 cores
            if done % step == 0 or done == count:
                print(f"synth: {done}/{count} images, {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)

        counts = generate(args.out, args.count, args.seed, on_written=written)
        print(f"wrote {sum(counts.values())} images to {args.out} {counts} in {time.perf_counter() - start:.1f}s")
    elif args.command == "train":
        from training.config import load_config
        from training.train import run as train_run

        config = load_config(args.config, args.set + (["data.allow_small=true"] if args.allow_small_data else []))
        train_run(config, args.data, args.run_dir, resume=args.resume, stop_after_epoch=args.stop_after_epoch)
    elif args.command == "export":
        import tempfile

        from model_store.signing import public_key_file
        from model_store.store.base import check_version_name, default_actor
        from training.export import export_run, export_to_store

        check_version_name(args.version)  # before minutes of work, not in the manifest's validation after them

        if args.out:
            bundle, diff = export_run(args.run, args.key, args.version, args.out, args.data)
            where = str(args.out)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                pub = args.public_key or public_key_file(args.key, Path(tmp) / "public.pem")
                bundle, diff = export_to_store(
                    args.run, args.key, args.version, args.store, pub, default_actor(), args.data
                )
            where = f"store {args.store}"
        m = bundle.manifest
        print(
            f"exported {m.name} {m.version} to {where}: threshold {m.decision.threshold:.4f}, "
            f"{len(m.parity.references)} reference images, max |bundle - training| on test {diff:.2g}"
        )
        dom = m.monitoring.domain if m.monitoring else None
        if dom is not None and dom.test_images:
            print(
                f"retake check: {dom.test_retakes} of {dom.test_images} test images are outside the validated "
                f"ranges ({(dom.test_retakes or 0) / dom.test_images:.1%}); the service answers such images 'retake'"
            )
    elif args.command == "evaluate":
        from training.evaluate import evaluate_bundle

        print(json.dumps(evaluate_bundle(args.bundle, args.public_key, args.data, args.split), indent=2))
    elif args.command == "redecide":
        _redecide(args)
    elif args.command == "explain-eval":
        from training.explain import explain_eval

        methods = EXPLAIN_METHODS if args.method == "all" else (args.method,)
        result = explain_eval(args.bundle, args.public_key, args.data, args.split, methods, args.limit)
        for r in result["results"]:
            print(
                f"{r['method']}: pointing accuracy {r['pointing_accuracy']:.3f} [{r['interval'][0]:.3f}, "
                f"{r['interval'][1]:.3f}] ({r['hits']} of {r['images']} damaged images, split {args.split}) vs "
                f"baseline {r['baseline']:.3f} (the damage's share of what the model sees); "
                f"{r['seconds_per_image'] * 1000:.0f} ms per image on one thread"
            )
    elif args.command == "weights":
        from training.weights import convert

        c = convert(args.src, args.out, args.architecture)
        print(
            f"wrote {args.out}: {c.kept} of {args.architecture}'s {c.expected} tensors from {args.src.name}; "
            f"dropped {len(c.dropped)} that do not fit ({', '.join(c.dropped) or 'none'}); "
            f'new: {", ".join(c.missing) or "none"}. Fine-tune with --set model.pretrained="{args.out}"'
        )
    elif args.command == "dataset":
        from training.feedback import dataset_from_feedback

        counts = dataset_from_feedback(args.from_feedback, args.out)
        print(f"wrote {sum(counts.values())} labelled images to {args.out} {counts} (provenance.json beside them)")
    elif args.command == "compare":
        from training.compare import compare

        if len(args.bundle) != 2:
            print("error: give --bundle exactly twice (A, then B)", file=sys.stderr)
            return 2
        s = compare(args.bundle[0], args.bundle[1], args.public_key, args.images, args.out)
        print(
            f"{s['images']} images: agreement {s['agreement']:.1%}, flips {s['flips']}, "
            f"mean |dp| {s['mean_abs_probability_diff']:.4f}; see {args.out / 'compare.html'}"
        )
    return 0


def _redecide(args: argparse.Namespace) -> None:
    import tempfile

    from model_store.signing import public_key_file
    from model_store.store.base import check_version_name
    from training.redecide import redecide

    check_version_name(args.version)
    given = {
        "cost_miss": args.cost_miss,
        "cost_false_alarm": args.cost_false_alarm,
        "deployment_prevalence": args.prevalence,
        "method": args.method,
        "target_recall": args.target_recall,
    }
    out = args.out or args.bundle.parent / args.version
    with tempfile.TemporaryDirectory() as tmp:
        pub = args.public_key or public_key_file(args.key, Path(tmp) / "public.pem")
        parent, child = redecide(
            args.bundle, pub, args.key, args.version, out, **{k: v for k, v in given.items() if v is not None}
        )
    a, b = parent.manifest.decision, child.manifest.decision
    print(
        f"wrote {child.manifest.name} {child.version} to {out}: threshold {a.threshold:.4f} -> {b.threshold:.4f}, "
        f"expected cost {a.expected_cost or 0:.3f} -> {b.expected_cost or 0:.3f} per parcel at "
        f"{b.deployment_prevalence or b.validation_prevalence or 0:.3g} damaged; same weights "
        f"({child.manifest.weights_sha256[:12]}), parent {parent.manifest_sha256[:12]}"
    )
    for warning in b.warnings:  # the same checks training makes (training.operating_point)
        print(f"warning: {warning}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors and --help before torch loads
    from pydantic import ValidationError

    from model_store.errors import ModelStoreError, describe_validation_errors
    from training.config import ConfigError
    from training.data import DataError
    from training.export import ExportError
    from training.redecide import RedecideError
    from training.train import RunError
    from training.weights import WeightsError

    refused = (ConfigError, DataError, RunError, ExportError, RedecideError, WeightsError, ModelStoreError, OSError)
    try:
        return run(args)
    except refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:  # a value given on the command line that a manifest or policy refuses
        print(f"error: {describe_validation_errors(exc.errors(), args.command)}", file=sys.stderr)
        return 1
