"""Rewrite the README's demo block from a finished run directory, so its numbers stay true.

    .venv/bin/python scripts/update_readme_demo.py demo/run            # after `make demo`
    .venv/bin/python scripts/update_readme_demo.py demo/run --readme README.md --check

The block between the `<!-- demo-run:begin` and `<!-- demo-run:end -->` lines is replaced
by the run's training log, abridged (first, best and last epochs) and rendered by the same
functions that print it during training, plus one sentence of the figures a reader wants.
Exit 0, or 1 with one `error:` line (no markers, a run that has not finished); with
`--check`, 1 when the block is not what the run gives.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from training.config import ConfigError, config_from_run
from training.data import SplitManifest, summary
from training.metrics import expected_cost
from training.progress import data_line, epoch_line, summary_lines

ROOT = Path(__file__).resolve().parents[1]

BEGIN = "<!-- demo-run:begin"
END = "<!-- demo-run:end -->"


class Refused(Exception):
    """The block cannot be written; the message says why."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise Refused(f"{path} does not exist: is {path.parent} a finished run directory?") from None


def render(run_dir: Path) -> list[str]:
    """The block's lines (markers excluded) for a finished run."""
    evaluation = _read_json(run_dir / "eval.json")
    if "intervals" not in evaluation.get("test", {}):
        raise Refused(f"{run_dir / 'eval.json'} predates intervals: train a new run (the block shows them)")
    try:
        epochs = config_from_run(run_dir).optim.epochs
    except ConfigError as exc:
        raise Refused(str(exc)) from None
    try:
        split = SplitManifest.from_json_bytes((run_dir / "split.json").read_bytes())
    except FileNotFoundError:
        raise Refused(f"{run_dir / 'split.json'} does not exist: is {run_dir} a run directory?") from None
    # By epoch: a resumed run appends to metrics.jsonl, and the last line of an epoch wins.
    rows = {r["epoch"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    best = evaluation["best_epoch"]
    shown = sorted({1, best, epochs})
    missing = [e for e in shown if e not in rows]
    if missing:
        raise Refused(f"{run_dir}/metrics.jsonl has no epoch {missing[0]} of {epochs}: did the run finish?")

    log = [data_line(summary(split), split.sha256)]
    for i, epoch in enumerate(shown):
        if i and epoch != shown[i - 1] + 1:
            log.append("...")
        # The first epoch always improves on nothing; later, only the chosen one is marked,
        # which is exact for the epochs shown (the last one is the best only if chosen).
        log.append(epoch_line(rows[epoch], epochs, improved=epoch in (1, best)))
    log += summary_lines(evaluation)

    d, test = evaluation["decision"], evaluation["test"]
    op, ci = test["at_threshold"], test["intervals"]
    rate = d["deployment_prevalence"] or d["validation_prevalence"]
    flag_all = expected_cost(1.0, 0.0, rate, d["cost_false_alarm"], d["cost_miss"])
    damaged = test["counts"][d["positive_label"]]
    sentence = (
        f"With a miss costing {d['cost_miss'] / d['cost_false_alarm']:g} times a false alarm, this run's model "
        f"catches {op['recall']:.1%} of the {damaged} damaged test parcels (95% interval "
        f"{ci['recall'][0]:.1%} to {ci['recall'][1]:.1%}) at a {op['false_positive_rate']:.1%} false-alarm rate "
        f"({ci['false_positive_rate'][0]:.1%} to {ci['false_positive_rate'][1]:.1%}), for {op['expected_cost']:.3f} "
        f"cost units per parcel ({ci['expected_cost'][0]:.3f} to {ci['expected_cost'][1]:.3f}) at {rate:.1%} "
        f"damaged; flagging every parcel would cost {flag_all:.3f}."
    )
    return [
        f"{BEGIN} (written by scripts/update_readme_demo.py from a demo run; do not edit by hand) -->",
        "```",
        *log,
        "```",
        "",
        sentence,
        END,
    ]


def replace_block(text: str, block: list[str], source: str = "README.md") -> str:
    lines = text.splitlines()
    begins = [i for i, line in enumerate(lines) if line.startswith(BEGIN)]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) != 1 or len(ends) != 1 or begins[0] > ends[0]:
        raise Refused(
            f"{source} needs exactly one line starting {BEGIN!r} followed by one {END!r} line "
            f"(found {len(begins)} and {len(ends)})"
        )
    out = lines[: begins[0]] + block + lines[ends[0] + 1 :]
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a finished run directory, e.g. demo/run")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if the block is out of date")
    args = p.parse_args(argv)
    try:
        text = args.readme.read_text()
        new = replace_block(text, render(args.run_dir), str(args.readme))
    except (Refused, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.check:
        if new != text:
            print(
                f"error: the demo block of {args.readme} is not what {args.run_dir} gives; run without --check",
                file=sys.stderr,
            )
            return 1
        return 0
    if new != text:
        args.readme.write_text(new)
    print(f"{args.readme}: demo block {'rewritten' if new != text else 'already up to date'} from {args.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
