"""The benchmark's table (markdown) and plot (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def markdown(results: dict[str, Any]) -> str:
    ip = results["in_process"]
    lines = [
        f"In-process limit ({ip['processes']} process(es) x 1 thread, batch {ip['batch']}): "
        f"{ip['images_per_s']:.1f} img/s; "
        f"one image alone: p50 {ip['single_image_p50_ms']:.2f} ms. Decode: {results['decode']}, "
        f"runtime: {results['runtime']['graph']} / {results['runtime']['memory_format']}, "
        f"monitoring: {results.get('monitoring', 'on')}.",
        "",
        "| images/request | concurrency | req/s | img/s | p50 ms | p95 ms | p99 ms | errors | 503 | server cores "
        "| client cores | x limit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["levels"]:
        server = f"{r['server_cores']:.2f}" if "server_cores" in r else "-"
        lines.append(
            f"| {r['images_per_request']} | {r['concurrency']} | {r['requests_per_s']:.1f} | {r['images_per_s']:.1f} "
            f"| {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {r['shed_503']} "
            f"| {server} | {r['client_cores']:.2f} | {r['ratio_to_limit']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], out: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    limit = results["in_process"]["images_per_s"]
    for per_request in sorted({r["images_per_request"] for r in results["levels"]}):
        rows = [r for r in results["levels"] if r["images_per_request"] == per_request]
        xs = [r["concurrency"] for r in rows]
        label = f"{results['server']}, {per_request} img/request"
        a.plot(xs, [r["images_per_s"] for r in rows], "o-", label=label)
        b.plot(xs, [r["p50_ms"] for r in rows], "o-", label=f"{label} p50")
        b.plot(xs, [r["p99_ms"] for r in rows], "o--", label=f"{label} p99")
    a.axhline(limit, color="k", ls=":", label=f"in-process limit {limit:.0f} img/s")
    a.set(xscale="log", xlabel="concurrent clients", ylabel="images / s", title="Throughput", ylim=(0, limit * 1.15))
    a.legend(fontsize=8)
    b.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms", title="Latency")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
