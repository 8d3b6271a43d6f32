"""`python -m benchmarks`: our service against the in-process limit of its own pipeline.

    python -m benchmarks                          # start the service, measure, write results/
    python -m benchmarks --url http://host:8080/predictions/model   # drive another server too
    python -m benchmarks --deadline-ms 300        # open loop at 1x, 2x, 4x the limit: goodput

Progress goes to stderr; the table, `results.json` and `throughput.png` go to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from app.settings import Settings
from model_store.manifest import RuntimeSpec
from training.config import TrainConfig


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--url", help="drive this URL (raw JPEG bodies) instead of starting our service")
    p.add_argument("--name", default=None, help="label for the --url server in the results")
    p.add_argument("--levels", default="1,4,16,64,256", help="client concurrency levels")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds before each level")
    p.add_argument("--multipart", type=int, default=8, help="images per multipart request (0 = skip)")
    p.add_argument("--decode", choices=["dct", "full"], default="dct", help="JPEG decode of the bundle's spec")
    trained = TrainConfig.model_fields["runtime"].default  # what new training configs record
    p.add_argument("--graph", choices=["eager", "fused"], default=trained.graph)
    p.add_argument("--memory-format", choices=["contiguous", "channels_last"], default=trained.memory_format)
    p.add_argument("--workers", type=int, default=None, help="APP_WORKERS (default: the service's own)")
    p.add_argument("--monitoring", choices=["on", "off"], default="on", help="drift monitoring in the service")
    p.add_argument(
        "--deadline-ms",
        type=int,
        default=None,
        help="instead of the closed-loop levels: offer 1x, 2x and 4x the in-process limit (open loop), every "
        "request with X-Request-Timeout-Ms of this; report goodput (answers within it), 504s, 503s",
    )
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument(
        "--ignore-retry-after",
        action="store_true",
        help="resend at once after a 503 (default: wait its Retry-After, as stations do)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from benchmarks import inprocess, load, report, service
    from benchmarks.images import camera_jpegs

    started = time.perf_counter()
    levels = [int(x) for x in args.levels.split(",")]
    cores = len(os.sched_getaffinity(0))
    args.out.mkdir(parents=True, exist_ok=True)
    _progress(f"[{time.perf_counter() - started:5.1f}s] 64 camera-like 1280x720 JPEGs")
    images = camera_jpegs(64)
    runtime = RuntimeSpec(graph=args.graph, memory_format=args.memory_format)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        root = Path(tmp)
        bundle, _, public = service.make_bundle(root, images, jpeg_dct_scaling=args.decode == "dct", runtime=runtime)
        batch = Settings.model_fields["max_batch"].default
        _progress(
            f"[{time.perf_counter() - started:5.1f}s] in-process limit: {cores} process(es) x 1 thread, batch {batch}"
        )
        limit = inprocess.throughput_limit(bundle, public, images, cores, batch, seconds=args.seconds)
        latency = inprocess.single_image_latency_ms(bundle, public, images)
        _progress(f"          {limit:.1f} img/s; one image alone: p50 {latency:.2f} ms")

        proc = None
        url = args.url
        settings = {"workers": str(args.workers)} if args.workers else {}
        if args.monitoring == "off":
            settings["monitor_window"] = "0"
        if url is None:
            store = service.make_store(root, bundle, public)
            proc, base = service.start_service(store, public, args.out / "service.log", **settings)
            url = f"{base}/v1/predict"
        rows: list[dict[str, Any]] = []
        try:
            if args.deadline_ms is not None:
                return _deadline_levels(args, url, images, limit, latency, started)
            modes = [1] + ([args.multipart] if args.multipart and args.url is None else [])
            for per_request in modes:
                if per_request == 1:
                    requests = [load.raw_request(url, img) for img in images]
                else:
                    requests = [
                        load.multipart_request(url, [images[(i + k) % 64] for k in range(per_request)])
                        for i in range(0, 64, per_request)
                    ]
                for c in levels:
                    cpu0 = service.tree_cpu_seconds(proc.pid) if proc else None
                    t0 = time.perf_counter()
                    result = load.run_level(
                        url, requests, c, per_request, args.warmup, args.seconds, not args.ignore_retry_after
                    )
                    row: dict[str, Any] = result.as_dict()
                    if proc is not None and cpu0 is not None:
                        row["server_cores"] = (service.tree_cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0)
                    row["ratio_to_limit"] = row["images_per_s"] / limit
                    rows.append(row)
                    _progress(
                        f"[{time.perf_counter() - started:5.1f}s] {per_request} img/request, concurrency {c:>3}: "
                        f"{row['requests_per_s']:7.1f} req/s {row['images_per_s']:7.1f} img/s "
                        f"p50 {row['p50_ms']:7.1f} p99 {row['p99_ms']:7.1f} ms  errors {row['errors']} "
                        f"503 {row['shed_503']}  {row['ratio_to_limit']:.2f}x limit"
                    )
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=60)
    results = {
        "server": args.name or ("ours" if args.url is None else args.url),
        "cores": cores,
        "decode": args.decode,
        "runtime": runtime.model_dump(),
        "monitoring": args.monitoring,
        "in_process": {"images_per_s": limit, "single_image_p50_ms": latency, "batch": batch, "processes": cores},
        "levels": rows,
        "seconds": time.perf_counter() - started,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report.plot(results, args.out / "throughput.png")
    table = report.markdown(results)
    (args.out / "table.md").write_text(table)
    print(table)
    _progress(f"[{time.perf_counter() - started:5.1f}s] wrote {args.out}/results.json, throughput.png, table.md")
    return 0


def _deadline_levels(
    args: argparse.Namespace, url: str, images: list[bytes], limit: float, latency: float, started: float
) -> int:
    """Open loop: 1x, 2x and 4x the limit offered, each request with the same budget."""
    from benchmarks import load

    requests = [load.raw_request(url, img) for img in images]
    rows = []
    for factor in (1, 2, 4):
        result = load.run_open_level(url, requests, factor * limit, args.warmup, args.seconds, args.deadline_ms)
        row: dict[str, Any] = {"offered_x_limit": factor, **result.as_dict()}
        row["goodput_x_limit"] = row["goodput_per_s"] / limit
        rows.append(row)
        _progress(
            f"[{time.perf_counter() - started:5.1f}s] offered {factor}x ({row['offered_per_s']:.0f}/s), "
            f"deadline {args.deadline_ms} ms: goodput {row['goodput_per_s']:.1f}/s "
            f"({row['goodput_x_limit']:.2f}x limit) "
            f"504 {row['expired_504']} 503 {row['shed_503']} late 200 {row['late_200']} errors {row['errors']} "
            f"p50 {row['p50_ms']:.0f} p99 {row['p99_ms']:.0f} max {row['max_ms']:.0f} ms"
        )
    results = {
        "server": args.name or ("ours" if args.url is None else args.url),
        "in_process": {"images_per_s": limit, "single_image_p50_ms": latency},
        "deadline_ms": args.deadline_ms,
        "levels": rows,
    }
    (args.out / "deadline.json").write_text(json.dumps(results, indent=2) + "\n")
    header = "| offered | goodput (x limit) | 504 | 503 | late 200 | errors | p50 ms | p99 ms | max ms | late sends |"
    lines = [header, "|" + "---|" * 10]
    lines += [
        f"| {r['offered_x_limit']}x | {r['goodput_per_s']:.1f}/s ({r['goodput_x_limit']:.2f}x) | {r['expired_504']} | "
        f"{r['shed_503']} | {r['late_200']} | {r['errors']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
        f"{r['max_ms']:.0f} | {r['late_sends']} |"
        for r in rows
    ]
    print(f"in-process limit {limit:.1f} img/s; deadline {args.deadline_ms} ms\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
