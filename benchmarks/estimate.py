"""`python -m benchmarks.estimate`: how often the realised quality of a window of decisions
falls inside the interval the service estimates without labels, and how often the cost
alarm fires, on labelled traffic at known damage rates.

    python -m benchmarks.estimate --synthetic          # a calibrated score model (seconds)
    python -m benchmarks.estimate --bundle demo/store/versions/demo-1 --public-key demo/keys/public.pem

Per damage rate and window size, `--trials` windows: each parcel is damaged with that rate,
so its true label is known, and gets a served probability. Each window is estimated as
`/v1/monitoring` estimates a station (`model_store.estimate`) and compared with its
realised figures.

- `--synthetic`: the model's logit is N(0, 1) for an intact parcel and N(2.1, 1) for a
  damaged one (ROC-AUC 0.93, the demo model's test figure), and the served probability is
  the exact Bayes posterior at a 3% deployment rate: calibrated at 3%, off by exactly the
  prior elsewhere, as at a station whose damage rate moved. This measures the method.
- `--bundle`: fresh synthetic parcel photos (the demo's generator, seeds no training run
  uses) scored once through the serving path (preprocessing, model, calibration, prior
  shift; those the bundle answers `retake` left out, as the service leaves them out); a
  window draws a photo of each parcel's class. This measures a real model, whose
  calibration holds on these photos only as far as it does.

Rows: `inferred` is the service's estimate (the window's damage rate inferred first);
`as served` takes the probabilities as calibrated for the window; `darker` (a bundle only)
is the service's estimate on the same photos 30% darker: image drift.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from model_store import domain
from model_store import estimate as quality
from model_store import monitoring as mon
from model_store.bundle import load_bundle
from model_store.manifest import DecisionSpec
from model_store.predictor import Predictor
from training.synth import PHOTO_SIZE, render

Window = Callable[[np.random.Generator, int, float], tuple[np.ndarray, np.ndarray]]  # (probabilities, damaged)

FRESH_SEEDS = 50_000_000  # training data uses render seeds below 1,000,003 x its --seed + its count
BATCH = 32
SEPARATION = 2.1  # the synthetic model: ROC-AUC = Phi(2.1 / sqrt(2)) = 0.931
SYNTHETIC_SERVED = 0.03


def _say(line: str, progress: bool = False) -> None:
    """The table to stdout; progress to stderr."""
    out = sys.stderr if progress else sys.stdout
    out.write(line + "\n")
    out.flush()


def calibrated_traffic(rng: np.random.Generator, n: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(served probabilities, damaged) of n parcels at a station whose damage rate is `rate`,
    scored by the synthetic model, served at `SYNTHETIC_SERVED` (as float32, as the service)."""
    damaged = rng.random(n) < rate
    logit = rng.normal(0, 1, n) + SEPARATION * damaged
    log_odds = SEPARATION * logit - SEPARATION**2 / 2 + np.log(SYNTHETIC_SERVED / (1 - SYNTHETIC_SERVED))
    return (1 / (1 + np.exp(-log_odds))).astype(np.float32).astype(np.float64), damaged


def synthetic_decision(seed: int = 3) -> DecisionSpec:
    """The synthetic model's operating point: the cost-optimal threshold on calibrated
    probabilities at 1 : 5 (1/6), and its expected cost at 3% measured on a million parcels."""
    p, damaged = calibrated_traffic(np.random.default_rng(seed), 1_000_000, SYNTHETIC_SERVED)
    flagged = p >= 1 / 6
    cost = float(((flagged & ~damaged).sum() + 5 * (~flagged & damaged).sum()) / len(p))
    return DecisionSpec(
        threshold=1 / 6,
        method="fixed",
        cost_false_alarm=1,
        cost_miss=5,
        validation_prevalence=0.5,
        deployment_prevalence=SYNTHETIC_SERVED,
        expected_cost=cost,
    )


def _photo(seed: int, damaged: bool, brightness: float) -> bytes:
    img = render(seed, damaged, PHOTO_SIZE)
    if brightness != 1.0:
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) * brightness, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=random.Random(seed).randint(70, 95))  # as `training.synth.generate`
    return buf.getvalue()


def score(predictor: Predictor, photos: list[bytes]) -> tuple[np.ndarray, int, list[list[float]]]:
    """Served probabilities of the photos the bundle judges, how many it sends to retake, and
    the crop features (brightness, contrast, sharpness) of those it judges."""
    m = predictor.manifest
    bounds = m.monitoring.domain if m.monitoring is not None else None
    stride = m.monitoring.stats_stride if m.monitoring is not None else 1
    kept: list[torch.Tensor] = []
    features: list[list[float]] = []
    retakes = 0
    for data in photos:
        info = predictor.preprocessor.inspect(data)
        x, stats = predictor.preprocessor.prepare(data, stride)
        if bounds is not None and domain.reason(bounds, domain.measures(stats, info.width, info.height)):
            retakes += 1
            continue
        kept.append(x)
        features.append(stats.as_list())
    probs: list[float] = []
    for start in range(0, len(kept), BATCH):
        probs.extend(predictor.probabilities(torch.stack(kept[start : start + BATCH])))
    return np.asarray(probs, dtype=np.float64), retakes, features


def photo_traffic(intact: np.ndarray, damaged_pool: np.ndarray) -> Window:
    """Windows whose parcels each get a random scored photo of their class."""

    def window(rng: np.random.Generator, n: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
        damaged = rng.random(n) < rate
        p = np.where(
            damaged, damaged_pool[rng.integers(0, len(damaged_pool), n)], intact[rng.integers(0, len(intact), n)]
        )
        return p, damaged

    return window


def trial_figures(
    window: Window,
    n: int,
    rate: float,
    trials: int,
    served_rate: float | None,
    decision: DecisionSpec,
    limit: float | None,
    seed: int,
) -> dict[str, Any]:
    """Per figure the share of windows whose realised figure lies in the interval, the mean
    estimated and realised figures, and how often the cost alarm fires (and how often a rule
    on the expected figure alone would)."""
    rng = np.random.default_rng(seed)
    inside: dict[str, list[bool]] = {f: [] for f in quality.FIGURES}
    estimated: dict[str, list[float]] = {f: [] for f in quality.FIGURES}
    real: dict[str, list[float]] = {f: [] for f in quality.FIGURES}
    alarms = naive_alarms = 0
    for _ in range(trials):
        p, damaged = window(rng, n, rate)
        costs = decision.cost_false_alarm, decision.cost_miss
        e = quality.estimate(p, decision.threshold, *costs, served_rate)
        assert e is not None
        r = quality.realised(list(zip(p >= decision.threshold, damaged, strict=True)), *costs)
        alarms += quality.cost_alarm(e, limit)
        naive_alarms += limit is not None and (e.figures["cost_per_parcel"] or 0) > limit
        for f in quality.FIGURES:
            interval, value, guess = e.intervals[f], r[f], e.figures[f]
            if interval is not None and value is not None and guess is not None:
                inside[f].append(interval[0] <= value <= interval[1])
                estimated[f].append(guess)
                real[f].append(value)
    return {
        "coverage": {f: float(np.mean(v)) if v else None for f, v in inside.items()},
        "windows": {f: len(v) for f, v in inside.items()},
        "estimated": {f: float(np.mean(v)) if v else None for f, v in estimated.items()},
        "realised": {f: float(np.mean(v)) if v else None for f, v in real.items()},
        "cost_alarm_rate": alarms / trials,
        "expected_figure_alarm_rate": naive_alarms / trials,
    }


def _bundle_traffic(args: argparse.Namespace) -> tuple[str, DecisionSpec, dict[str, Window], dict[str, Any]]:
    predictor = Predictor(load_bundle(args.bundle, args.public_key))
    reference = predictor.manifest.monitoring
    traffic: dict[str, Window] = {}
    retakes: dict[str, dict[str, int]] = {}
    drift: dict[str, dict[str, float]] = {}  # PSI of the judged photos' features, as the service's windows see them
    for look, brightness in (("as validated", 1.0), ("darker", 0.7)):
        pools, features = [], []
        for label, is_damaged in (("intact", False), ("damaged", True)):
            _say(f"{look}: rendering and scoring {args.photos} {label} photos", progress=True)
            first = FRESH_SEEDS + is_damaged * 1_000_000
            probs, sent_back, stats = score(
                predictor, [_photo(s, is_damaged, brightness) for s in range(first, first + args.photos)]
            )
            pools.append(probs)
            features.extend(stats)
            retakes.setdefault(look, {})[label] = sent_back
        traffic[look] = photo_traffic(pools[0], pools[1])
        if reference is not None:
            drift[look] = {
                f: round(mon.psi(reference.features[f], [row[i] for row in features]), 3)
                for i, f in enumerate(mon.IMAGE_FEATURES)
            }
    m = predictor.manifest
    about = {"photos_per_class": args.photos, "retakes": retakes, "image_psi": drift}
    return f"{m.name} {m.version}", m.decision, traffic, about


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.estimate", description=__doc__.splitlines()[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--synthetic", action="store_true", help="a calibrated score model instead of a bundle")
    what.add_argument("--bundle", type=Path, help="a bundle directory (e.g. a stored version)")
    ap.add_argument("--public-key", type=Path, help="the key the bundle verifies with (with --bundle)")
    ap.add_argument("--photos", type=int, default=400, help="fresh photos rendered per class (with --bundle)")
    ap.add_argument("--trials", type=int, default=200, help="windows per damage rate and window size")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3], help="damage rates sent")
    ap.add_argument("--windows", type=int, nargs="+", default=[100, 500], help="window sizes (images)")
    ap.add_argument("--margin", type=float, default=0.5, help="the cost alarm's margin (APP_COST_ALARM_MARGIN)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = ap.parse_args(argv)
    if args.bundle is not None and args.public_key is None:
        ap.error("--bundle needs --public-key")

    if args.synthetic:
        name, decision = "synthetic calibrated model (ROC-AUC 0.93)", synthetic_decision()
        traffic: dict[str, Window] = {"as validated": calibrated_traffic}
        about: dict[str, Any] = {}
    else:
        name, decision, traffic, about = _bundle_traffic(args)
    served = quality.served_rate(decision)
    limit = quality.cost_limit(decision, args.margin)
    variants = [("inferred", "as validated", served), ("as served", "as validated", None), ("darker", "darker", served)]
    rows: list[dict[str, Any]] = []
    for rate in args.rates:
        for n in args.windows:
            for label, look, rate_model in variants:
                if look not in traffic or (label == "as served" and served is None):
                    continue  # no darker photos of a synthetic model; a bundle that states no rate: the same row
                figures = trial_figures(
                    traffic[look], n, rate, args.trials, rate_model, decision, limit, n + int(rate * 1e6)
                )
                rows.append({"rate": rate, "window": n, "estimate": label, **figures})
                _say(f"rate {rate} window {n} {label}: {figures['coverage']}", progress=True)

    _say(
        f"\n{name}: served rate {served}, threshold {decision.threshold:.4f}, costs {decision.cost_false_alarm:g} / "
        f"{decision.cost_miss:g}, expected cost {decision.expected_cost}, alarm limit {limit} (margin {args.margin})"
    )
    if about:
        _say(f"photos per class: {about['photos_per_class']}; sent to retake: {json.dumps(about['retakes'])}")
        _say(
            f"PSI of the judged photos' image features against the bundle's reference: {json.dumps(about['image_psi'])}"
        )
    _say(
        f"{args.trials} windows a row; the share whose realised figure lies in the {quality.LEVEL:.0%} interval, "
        "the mean estimated and realised cost, how often the cost alarm fired (and a rule on the expected figure)"
    )
    short = {
        "damage_rate": "damaged",
        "precision": "precision",
        "recall": "recall",
        "false_alarm_rate": "false al.",
        "cost_per_parcel": "cost",
    }
    cols = "".join(f"{short[f]:>10}" for f in quality.FIGURES)
    _say(f"{'rate':>5} {'window':>6} {'estimate':<10}{cols}{'cost est.':>10}{'realised':>9}{'alarms':>8}{'(exp.)':>8}")
    for r in rows:
        cells = "".join(
            f"{r['coverage'][f]:>10.3f}" if r["coverage"][f] is not None else f"{'-':>10}" for f in quality.FIGURES
        )
        est, real = r["estimated"]["cost_per_parcel"], r["realised"]["cost_per_parcel"]
        _say(
            f"{r['rate']:>5} {r['window']:>6} {r['estimate']:<10}{cells}{est:>10.3f}{real:>9.3f}"
            f"{r['cost_alarm_rate']:>8.1%}{r['expected_figure_alarm_rate']:>8.1%}"
        )
    if args.out:
        args.out.write_text(json.dumps({"model": name, **about, "limit": limit, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
