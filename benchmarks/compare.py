"""`python -m benchmarks.compare`: several benchmark runs on one plot (single-image requests).

    python -m benchmarks.compare bench-results/service/results.json \
        bench-results/torchserve-batch8/results.json --out bench-results/compare.png

Each run is labelled by its server's name (and, for ours, whether monitoring was on).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


def label(results: dict[str, Any]) -> str:
    name = str(results["server"])
    return f"{name}, monitoring {results['monitoring']}" if name == "ours" else name  # a --url run has no monitoring


def plot(runs: list[dict[str, Any]], out: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for results in runs:
        rows = [r for r in results["levels"] if r["images_per_request"] == 1]
        xs = [r["concurrency"] for r in rows]
        name = label(results)
        a.plot(xs, [r["images_per_s"] for r in rows], "o-", label=name)
        b.plot(xs, [r["p99_ms"] for r in rows], "o-", label=name)
    a.set(xscale="log", xlabel="concurrent clients", ylabel="images / s", title="Throughput, 1 image per request")
    a.set_ylim(bottom=0)
    a.legend(fontsize=8)
    b.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms", title="p99 latency")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path, help="results.json files written by python -m benchmarks")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = p.parse_args(argv)
    try:
        runs = [json.loads(path.read_text()) for path in args.results]
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    plot(runs, args.out)
    sys.stderr.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
