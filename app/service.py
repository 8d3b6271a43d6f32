"""What every route needs, built once at startup: settings, the model host (and its
pipeline), metrics, and the request-body limits derived from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from app.edge.intake import BodyLimits, ByteBudget
from app.edge.observability import Metrics
from app.edge.stations import StationTokens
from app.edge.telemetry import Telemetry
from app.ops.capture import Capturer
from app.ops.drift import Monitor
from app.ops.model_host import Loaded, ModelHost
from app.ops.receipts import Receipts
from app.ops.summaries import Summaries
from app.serving.pipeline import Pipeline
from app.settings import Settings
from model_store.capture import open_capture
from model_store.preprocessing import DecodeLimits
from model_store.store import open_store


@dataclass(frozen=True)
class Service:
    settings: Settings
    host: ModelHost
    metrics: Metrics
    monitor: Monitor
    capture: Capturer | None  # None: capture is off
    bodies: ByteBudget  # predict bodies in memory, all requests together
    station_tokens: StationTokens | None  # None: stations name themselves (APP_STATION_TOKENS_FILE unset)
    receipts: Receipts | None = None  # None: receipts are off (APP_RECEIPT_KEY unset)
    summaries: Summaries | None = None  # this replica's drift windows in the store, the fleet's read back

    @property
    def body_limits(self) -> BodyLimits:
        s = self.settings
        return BodyLimits(s.max_image_bytes, s.max_images_per_request, s.max_request_bytes, s.body_timeout_s)


def build_service(settings: Settings, metrics: Metrics, pipeline: Pipeline | None = None) -> Service:
    """Everything a running service holds, from its settings (nothing started yet).
    `pipeline`: another serving pipeline (the route tests' in-process fake)."""
    telemetry = Telemetry(metrics)
    pipeline = pipeline or Pipeline(
        workers=settings.workers,
        device=settings.device,
        threads_per_worker=settings.worker_threads,
        max_batch=settings.max_batch,
        queue_bound=settings.queue_bound,
        max_pending_pixels=settings.max_pending_megapixels * 1_000_000,
        limits=DecodeLimits(settings.max_image_bytes, settings.max_pixels),
        on_batch=telemetry.batch,
        image_stats=settings.monitor_window > 0,
        batch_timeout_s=settings.batch_timeout_s,
        image_digests=settings.receipt_key is not None,
        explain_bound=settings.max_explains,
    )
    monitor = Monitor(settings.monitor_window, settings.max_stations, settings.cost_alarm_margin)

    swaps = 0

    def swapped(loaded: Loaded, how: str) -> None:
        nonlocal swaps
        telemetry.swapped(loaded, how)
        swaps += 1
        if swaps == 1:
            # The first version served since the start: the windows seeded from this replica's
            # last summary (the canary's among them, followed only after this) are kept.
            return
        canary = host.canary  # it serves its stations still: keep its score windows
        # Score windows of versions no longer served; the stations' image features stay.
        monitor.forget({loaded.version} | ({canary.loaded.version} if canary else set()))

    host = ModelHost(
        open_store(settings.store, settings.public_key),
        pipeline,
        on_swap=swapped,
        on_refusal=telemetry.refused,
        on_follow_error=telemetry.follow_error,
        # The active version's scores on a canary station's images, scored in the background:
        # its score window there, the evidence a canary's estimated cost is compared with.
        on_compare=lambda active, station, images, scores: monitor.record(
            active, station, images, scores, served=False
        ),
    )
    capture = None
    if settings.capture_fraction > 0:
        capture = Capturer(
            open_capture(settings.capture_store),
            settings.capture_fraction,
            settings.capture_max_megabytes * 1_000_000,
            settings.capture_max_age_days * 86400,
        )
    bodies = ByteBudget(settings.max_body_bytes_in_flight, settings.retry_after_s)
    tokens = StationTokens.load(settings.station_tokens_file) if settings.station_tokens_file else None
    # Besides the windows, the summaries carry the canary's agreement with the active version
    # per station: `canary check` reads every replica's.
    summaries = Summaries(
        settings.replica,
        settings.summary_interval_s,
        monitor,
        host,
        comparisons=host.canary_comparisons,
        canary=lambda: host.canary.loaded.version if host.canary is not None else None,
    )
    return Service(
        settings, host, metrics, monitor, capture, bodies, tokens, Receipts.from_settings(settings), summaries
    )
