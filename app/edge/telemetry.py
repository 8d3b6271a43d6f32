"""What the service reports to Prometheus beyond per-request counters: swaps, batches, the
store follower, and live state read at scrape time (queue, workers, shadow, drift, the
estimated quality per station)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from app.edge.observability import Metrics, counter, gauge
from app.ops.capture import Capturer
from app.ops.drift import Monitor
from app.ops.model_host import Loaded, ModelHost
from app.ops.summaries import Summaries

_ESTIMATED = (
    "{}, estimated from the served probabilities of the station's window (no labels); bound: expected, low, high"
)
_MONITOR_FAMILIES: dict[str, tuple[str, list[str]]] = {
    "drift_psi": ("PSI of live inputs vs the bundle's reference", ["station", "feature"]),
    "estimated_damage_rate": (_ESTIMATED.format("Share of damaged parcels"), ["station", "bound"]),
    "estimated_precision": (_ESTIMATED.format("Damaged among the flagged"), ["station", "bound"]),
    "estimated_recall": (_ESTIMATED.format("Flagged among the damaged"), ["station", "bound"]),
    "estimated_false_alarm_rate": (_ESTIMATED.format("Flagged among the intact"), ["station", "bound"]),
    "estimated_cost_per_parcel": (_ESTIMATED.format("Cost per parcel"), ["station", "bound"]),
    "estimated_cost_alarm": ("1 while the station's estimated cost per parcel is past its limit", ["station"]),
}


class Telemetry:
    """The callbacks the pipeline and the model host report through."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def swapped(self, loaded: Loaded, how: str) -> None:
        m = self.metrics
        m.active.clear()
        m.active.labels(loaded.name, loaded.version, loaded.manifest_sha256).set(1)
        m.parity_ok.set(1 if loaded.parity.passed else 0)
        m.parity_diff.set(loaded.parity.max_abs_diff)
        m.swaps.labels(how).inc()

    def batch(self, images: int, decode_s: float, forward_s: float) -> None:
        self.metrics.batch_size.observe(images)
        self.metrics.decode_seconds.observe(decode_s)
        self.metrics.batch_seconds.observe(forward_s)

    def refused(self, code: str) -> None:
        self.metrics.refusals.labels(code).inc()

    def follow_error(self) -> None:
        self.metrics.follow_errors.inc()


def live_metrics(
    metrics: Metrics,
    host: ModelHost,
    monitor: Monitor,
    capture: Capturer | None,
    summaries: Summaries | None = None,
) -> Iterator[Metric]:
    pipeline = host.pipeline
    yield gauge("queue_depth_images", "Images queued or in a forward pass", pipeline.admission.images)
    yield gauge("queue_depth_megapixels", "Decode work queued or in progress", pipeline.admission.pixels / 1e6)
    yield gauge("inference_workers", "Inference processes", pipeline.workers)
    busy: dict[tuple[str, ...], float] = {(str(i),): s for i, s in enumerate(pipeline.pool.busy_seconds())}
    yield counter("worker_busy_seconds", "Seconds each worker spent on a frame", ["worker"], busy)
    yield counter("worker_restarts", "Inference workers started again after dying", [], {(): pipeline.pool.restarts()})
    yield counter(
        "worker_deadline_kills",
        "Inference workers replaced after missing a frame deadline",
        [],
        {(): pipeline.pool.stuck},
    )
    yield counter("parity_runs", "Runs of the served version's parity for GET /v1/parity", [], {(): host.parity_runs})
    # Read here, at scrape time: a gauge set from a scrape's own live collector would show
    # the previous scrape's value (the registry collects it before this runs).
    follow = host.follow_status
    yield gauge("store_follow_healthy", "1 while following the store works", 1 if follow.healthy else 0)
    yield gauge("store_follow_consecutive_failures", "Failed store reads in a row", follow.failures)
    run = host.shadow
    if run is not None:
        s = run.stats
        version = {"version": s.version}
        yield counter("shadow_images", "Images scored by the shadow version", ["version"], {(s.version,): s.images})
        flips: dict[tuple[str, ...], float] = {
            (s.version, "to_positive"): s.to_positive,
            (s.version, "to_negative"): s.to_negative,
            (s.version, "retake"): s.retake,
        }
        yield counter("shadow_flips", "Decisions the shadow would change", ["version", "direction"], flips)
        yield counter("shadow_dropped", "Sampled requests not shadowed", ["version"], {(s.version,): s.dropped})
        if s.images:
            yield gauge(
                "shadow_agreement_ratio", "Shadow decisions equal to the served ones", s.agree / s.images, version
            )
            yield gauge(
                "shadow_mean_abs_probability_diff", "Mean |shadow - served|", s.abs_diff_sum / s.images, version
            )
    # Computed off the loop by the scrape route (Monitor.refresh_gauges).
    for name, rows in monitor.gauges(host.current).items():
        doc, labels = _MONITOR_FAMILIES[name]
        family = GaugeMetricFamily(name, doc, labels=labels)
        for values, value in rows:
            family.add_metric(list(values), value)
        yield family
    if summaries is not None and summaries.enabled:
        yield counter("fleet_summary_writes", "This replica's drift window summaries written to the store",
                      ["outcome"], {("written",): summaries.written, ("failed",): summaries.failed})  # fmt: skip
    if capture is not None:
        c = capture
        yield counter("capture_requests", "Requests kept for feedback", ["outcome"],
                      {("written",): c.written, ("dropped",): c.dropped, ("failed",): c.failed})  # fmt: skip
