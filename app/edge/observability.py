"""Prometheus metrics and one JSON log line per request; the service's last line of defence."""

from __future__ import annotations

import json
import logging
import logging.config
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.edge.errors import error_response
from app.edge.intake import ClientGone

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # logged as given: nothing a log line must escape
CLIENT_CLOSED = 499  # nginx's code for "the client went away before the answer"


class Metrics:
    """One registry per app, so tests can run several apps in one process."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("http_requests_total", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Request latency",
            ["route"],
            registry=r,
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
        )
        self.batch_size = Histogram(
            "batch_size_images", "Images per forward pass", registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128)
        )
        self.batch_seconds = Histogram("batch_forward_seconds", "Forward pass time", registry=r)
        self.decode_seconds = Histogram("batch_decode_seconds", "Decode and preprocess time per batch", registry=r)
        self.images = Counter("predicted_images_total", "Images predicted", ["decision"], registry=r)
        self.retakes = Counter(
            "retake_images_total", "Images answered retake, by the feature outside its validated range", ["feature"],
            registry=r,
        )  # fmt: skip
        self.active = Gauge(
            "active_model_info", "The bundle being served", ["name", "version", "manifest_sha256"], registry=r
        )
        self.parity_ok = Gauge("parity_passed", "1 if the served bundle passed parity at load", registry=r)
        self.parity_diff = Gauge("parity_max_abs_diff", "Max abs diff of the last parity check", registry=r)
        self.swaps = Counter("model_swaps_total", "Model swaps", ["how"], registry=r)
        self.refusals = Counter("model_load_refusals_total", "Bundles refused at load", ["reason"], registry=r)
        self.shed = Counter("admission_refusals_total", "Requests refused by admission control", ["reason"], registry=r)
        self.expired = Counter(
            "deadline_exceeded_total", "Requests whose budget ran out (504), by where they were", ["stage"], registry=r
        )
        self.follow_errors = Counter("store_follow_errors_total", "Failed reads of the store's pointer", registry=r)

    def watch(self, collect: Callable[[], Iterator[Metric]]) -> None:
        """Add metrics read from live state at scrape time (queue depth, worker counters)."""
        self.registry.register(_Live(collect))


class _Live(Collector):
    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        return self._collect()


def counter(name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    if not labels:
        return GaugeMetricFamily(name, doc, value=value)
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


# Ours and uvicorn's loggers, one JSON line each on stderr: uvicorn's default configuration
# would print its warnings ("Invalid HTTP request received.") as plain text among them.
# uvicorn applies it (`app.edge.server.config`, `log_config=`); `configure_logging` again at startup.
LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "app.edge.observability._JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "loggers": {
        "app": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        **{
            name: {"handlers": ["stderr"], "level": "WARNING", "propagate": False}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
        },
    },
}


def configure_logging() -> None:
    logging.config.dictConfig(LOG_CONFIG)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if isinstance(record.msg, dict):
            entry.update(record.msg)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


access_log = logging.getLogger("app.access")
error_log = logging.getLogger("app.edge.errors")


class RequestObserver:
    """Pure ASGI middleware: request id, metrics, one JSON access line per request.

    The request id is always the service's own (uuid4: random, unguessable): it names the
    request's capture, which an inspector's label then trusts, so a client must not choose
    it (security review, issue 19). A client's own `X-Request-ID` is logged beside it as
    `client_request_id` and echoed back in `X-Client-Request-ID`.

    It is also where an unexpected exception stops: logged once (with the request id and
    traceback) and answered as a JSON 500 if nothing was sent yet. A client that hung up
    mid-body is counted as 499 and logged in one line, without a traceback.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode("latin-1")
        client_request_id = given if _CLIENT_REQUEST_ID.match(given) else None
        request_id = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        # A request's deadline runs from its arrival (app.edge.serve): as the protocol stamped
        # it when its first byte was parsed; here for a server that does not.
        state.setdefault("arrived", time.monotonic())
        echo = [(b"x-request-id", request_id.encode())]
        if client_request_id is not None:
            echo.append((b"x-client-request-id", given.encode()))
        start = time.perf_counter()
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", []).extend(echo)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except (ClientGone, ClientDisconnect):  # ours, or a body read by the framework or a route
            status = CLIENT_CLOSED
        except Exception as exc:
            status = 500
            error_log.error(
                {
                    "request_id": request_id,
                    "client_request_id": client_request_id,
                    "message": f"unhandled {type(exc).__name__}: {exc}",
                    "path": scope["path"],
                },
                exc_info=exc,
            )
            if not started:
                response = error_response(
                    500, "internal_error", f"an unexpected error occurred; the log has it under request id {request_id}"
                )
                await response(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            # The path as documented (`/v1/models/{version}/activate`), not with its converter.
            matched = scope.get("route")
            route = getattr(matched, "path_format", None) or getattr(matched, "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            access_log.info(
                {
                    "request_id": request_id,
                    "client_request_id": client_request_id,
                    "method": scope["method"],
                    "route": route,
                    "path": scope["path"],
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 2),
                    "version": scope["state"].get("version"),
                }
            )
