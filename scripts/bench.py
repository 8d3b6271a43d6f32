"""Latency and throughput of a running service, measured with a real HTTP client.

    .venv/bin/python scripts/bench.py --url http://127.0.0.1:8000 --image demo/data/damaged/parcel-000001.jpg

Sends single-image requests at each concurrency level (keep-alive connections), prints
p50/p90/p99 latency and throughput per level, and plots them to --plot.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


async def level(url: str, image: bytes, concurrency: int, requests: int) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    errors = 0
    per_worker = max(1, requests // concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            for _ in range(per_worker):
                start = time.perf_counter()
                r = await client.post("/v1/predict", content=image, headers={"Content-Type": "image/jpeg"})
                latencies.append(time.perf_counter() - start)
                errors += r.status_code != 200

        await asyncio.gather(*[worker() for _ in range(2)])  # warm-up connections and caches
        latencies.clear()
        errors = 0
        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        elapsed = time.perf_counter() - start
    return latencies, len(latencies) / elapsed, errors


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    p.add_argument("--concurrency", default="1,2,4,8,16")
    p.add_argument("--plot", type=Path, default=Path("bench.png"))
    args = p.parse_args()
    image = args.image.read_bytes()
    rows = []
    print(f"{'conc':>4} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'req/s':>8} {'errors':>6}")
    for c in (int(x) for x in args.concurrency.split(",")):
        lat, rps, errors = asyncio.run(level(args.url, image, c, args.requests))
        ms = [x * 1000 for x in lat]
        row = (c, percentile(ms, 50), percentile(ms, 90), percentile(ms, 99), statistics.mean(ms), rps, errors)
        rows.append(row)
        print(f"{row[0]:>4} {row[1]:>8.1f} {row[2]:>8.1f} {row[3]:>8.1f} {row[4]:>8.1f} {row[5]:>8.1f} {row[6]:>6}")
        sys.stdout.flush()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    cs = [r[0] for r in rows]
    for i, label in ((1, "p50"), (2, "p90"), (3, "p99")):
        a.plot(cs, [r[i] for r in rows], "o-", label=label)
    a.set(xscale="log", xlabel="concurrent clients", ylabel="latency (ms)", title="Single-image predict latency")
    a.legend()
    b.plot(cs, [r[5] for r in rows], "o-")
    b.set(xscale="log", xlabel="concurrent clients", ylabel="requests / s", title="Throughput")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
