"""The predict path as named steps, shared by every front door (`/v1/predict`, the Open
Inference Protocol's `/v2/.../infer`, and `/v1/explain` for one image): each door reads its
own body format and writes its own answer; everything between is here, once.

1. **pin** the version that serves the station (a canary's stations: the canary) and
   **admit** (`prediction`): shed at once when the queue is full, before a byte of the
   body is read; the body's bytes then count in the byte budget;
   the request's **deadline** (its own `X-Request-Timeout-Ms` or `APP_REQUEST_TIMEOUT_MS`,
   from its arrival) is checked after each step, and work past it is dropped with a 504;
2. **check** every image's header (bounded work, in the inspect threads) and **score** it
   (queue, batch, decode and forward in a worker, decide), then **record** drift and
   metrics (`Prediction.score`);
3. with receipts on, **sign** one per image, stating what the answer carries (`Prediction.receipts`);
4. **after** the answer is sent: shadow scoring, the canary's comparison with the active
   version, and capture (`Prediction.after`).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field

from starlette.background import BackgroundTasks
from starlette.requests import Request

from app.edge.deps import identify_station
from app.edge.errors import APIError, error_response
from app.edge.intake import BodyHold
from app.ops.drift import UNASSIGNED
from app.ops.model_host import Loaded
from app.service import Service
from app.serving.pipeline import DeadlineExceeded, Explained, Overloaded, RequestTooLarge, Scored, WorkerFailed
from app.settings import MAX_REQUEST_TIMEOUT_MS
from model_store.preprocessing import ImageInfo

TIMEOUT_HEADER = "x-request-timeout-ms"


@dataclass
class Prediction:
    """One request on its way through the steps: its pinned version, station and body budget."""

    service: Service
    request: Request
    loaded: Loaded
    station: str
    hold: BodyHold
    budget_ms: int  # 0: none
    deadline: float | None  # time.monotonic() by which the answer is of use
    checked: list[tuple[str, bytes, ImageInfo]] = field(default_factory=list)
    scores: list[Scored] = field(default_factory=list)

    @property
    def request_id(self) -> str:
        rid: str = self.request.state.request_id
        return rid

    def set_budget_ms(self, budget_ms: int) -> None:
        """A budget the body names (the protocol's `timeout`), counted from the arrival too."""
        self.budget_ms = budget_ms
        self.deadline = _arrival(self.request) + budget_ms / 1000

    def check_deadline(self, stage: str) -> None:
        """A 504 when the budget ran out by the end of `stage` (the work after it is dropped)."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise self._expired(DeadlineExceeded(stage, f"its budget ran out during {stage}"))

    def _expired(self, exc: DeadlineExceeded) -> APIError:
        self.service.metrics.expired.labels(exc.stage).inc()
        return APIError(504, "deadline_exceeded", f"{exc} ({self.budget_ms} ms from its arrival); nothing more is done")

    async def score(self, images: Sequence[tuple[str, bytes]]) -> list[Scored]:
        """Check, score and record `images` (name, bytes); refusals as JSON errors."""
        service, loaded = self.service, self.loaded
        metrics, pipeline = service.metrics, service.host.pipeline
        await self._check(images)
        with self._refusals():
            self.scores = await pipeline.predict(loaded.version, self.checked, deadline=self.deadline)
        service.monitor.record(loaded, self.station, self.checked, self.scores)
        for s in self.scores:
            metrics.images.labels(s.decision).inc()
            if s.retake is not None:
                metrics.retakes.labels(s.retake.feature).inc()
        return self.scores

    async def explain(self, image: tuple[str, bytes]) -> Explained:
        """Check and explain one image (`POST /v1/explain`): its served probability and where
        the evidence lies. Not station traffic: no drift, capture or shadow."""
        await self._check([image])
        with self._refusals():
            return await self.service.host.pipeline.explain(
                self.loaded.version, self.checked[0], deadline=self.deadline
            )

    async def _check(self, images: Sequence[tuple[str, bytes]]) -> None:
        self.check_deadline("read")
        self.checked = await self.service.host.pipeline.inspect(self.loaded.version, images)
        self.check_deadline("check")

    @contextlib.contextmanager
    def _refusals(self) -> Iterator[None]:
        """The pipeline's refusals as JSON errors, counted."""
        service = self.service
        try:
            yield
        except DeadlineExceeded as exc:
            raise self._expired(exc) from None
        except Overloaded as exc:
            raise _overloaded(exc, service) from None
        except RequestTooLarge as exc:
            service.metrics.shed.labels("request_too_large").inc()
            raise APIError(413, "request_too_large", f"{exc}; send fewer or smaller images per request") from None
        except WorkerFailed as exc:
            retry = {"Retry-After": str(service.settings.retry_after_s)}
            raise APIError(503, "worker_restarting", f"{exc}; retry shortly", retry) from None

    def receipts(self) -> list[str] | None:
        """A signed receipt per scored image, in order; None when receipts are off."""
        receipts = self.service.receipts
        if receipts is None:
            return None
        return receipts.sign(self.request_id, self.station, self.loaded, self.checked, self.scores)

    def after(self) -> BackgroundTasks | None:
        """Shadow scoring, the canary comparison and capture, to run once the answer is sent
        (never before it)."""
        service = self.service
        jobs = [
            service.host.shadow_job(self.loaded, self.checked, self.scores),
            service.host.canary_job(self.loaded, self.station, self.checked, self.scores),
        ]
        if service.capture is not None:
            jobs.append(service.capture.job(self.request_id, self.station, self.loaded, self.checked, self.scores))
        tasks = [job for job in jobs if job is not None]
        if not tasks:
            return None
        background = BackgroundTasks()
        for job in tasks:
            background.add_task(job)
        return background


@contextlib.asynccontextmanager
async def prediction(request: Request, service: Service) -> AsyncIterator[Prediction]:
    """Pin the version that serves the request's station and admit the request (before its
    body is read); the body's bytes count against the budget of all requests until the block
    ends. A request that names no station is served by the active version, never a canary."""
    station = identify_station(request, service)  # the token before a byte of the body
    budget_ms = request_budget_ms(request, service.settings.request_timeout_ms)
    deadline = _arrival(request) + budget_ms / 1000 if budget_ms else None
    with service.host.pinned(None if station == UNASSIGNED else station) as loaded:
        request.state.version = loaded.version
        try:
            service.host.pipeline.refuse_if_full(deadline)
        except Overloaded as exc:
            raise _overloaded(exc, service) from None
        with service.bodies.hold() as hold:
            p = Prediction(service, request, loaded, station, hold, budget_ms, deadline)
            p.check_deadline("admission")
            yield p


# The predict doors, as the routes declare them: `/v1/predict`, and the protocol's infer for
# a model and optionally a version (FastAPI's `{param}` is `[^/]+`). `PredictFastPath`
# answers them; a refusal for overload can answer them from the request's head alone.
PREDICT_PATHS = re.compile(r"/v1/predict|/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
_PREDICT_PATH = re.compile(PREDICT_PATHS.pattern.encode())  # the raw request target, before its query


def head_refusal(service: Service) -> Callable[[bytes, list[tuple[bytes, bytes]], float], bytes | None]:
    """What the HTTP protocol asks once a request's head is parsed (`app.edge.server`): the
    whole 503 answer when a predict request would be refused for overload anyway, else None.

    The same rule as `prediction` (`Pipeline.refuse_if_full`, with the request's budget),
    the same JSON and `Retry-After`, counted as shed; but answered before the request enters
    the application, so a refusal costs a parsed head instead of the middleware chain. At 4x
    overload the front spent about 0.9 of a core refusing through that chain, which the
    workers then lacked. Anything else (another path, a bad budget) takes the usual way.
    """
    pipeline, metrics, retry = service.host.pipeline, service.metrics, str(service.settings.retry_after_s)
    default_ms = service.settings.request_timeout_ms
    timeout_header = TIMEOUT_HEADER.encode()  # as the parser hands header names: lower-case bytes

    def refusal(url: bytes, headers: list[tuple[bytes, bytes]], arrived: float) -> bytes | None:
        path = url.split(b"?", 1)[0]
        if not _PREDICT_PATH.fullmatch(path):
            return None
        budget_ms = default_ms
        for name, value in headers:
            if name == timeout_header:
                if not (value.isdigit() and 1 <= int(value) <= MAX_REQUEST_TIMEOUT_MS):
                    return None  # its 422 comes from the usual way
                budget_ms = int(value)
        try:
            pipeline.refuse_if_full(arrived + budget_ms / 1000 if budget_ms else None)
        except Overloaded as exc:
            metrics.shed.labels("overloaded").inc()
            answer = error_response(
                503, "overloaded", f"{exc}; retry shortly", {"Retry-After": retry}, oip=path.startswith(b"/v2/")
            )
            head = b"".join(b"%s: %s\r\n" % (name, value) for name, value in answer.raw_headers)
            return b"HTTP/1.1 503 Service Unavailable\r\n" + head + b"\r\n" + bytes(answer.body)
        return None

    return refusal


def _overloaded(exc: Overloaded, service: Service) -> APIError:
    """Shed, counted: 503 with Retry-After (before the body is read, or when admitting it)."""
    service.metrics.shed.labels("overloaded").inc()
    return APIError(503, "overloaded", f"{exc}; retry shortly", {"Retry-After": str(service.settings.retry_after_s)})


def _arrival(request: Request) -> float:
    arrived: float = request.scope.get("state", {}).get("arrived", time.monotonic())
    return arrived


def request_budget_ms(request: Request, default_ms: int) -> int:
    """The request's own budget (`X-Request-Timeout-Ms`, 1 to 600000), or the default."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return default_ms
    if not (raw.isdigit() and 1 <= int(raw) <= MAX_REQUEST_TIMEOUT_MS):
        raise APIError(
            422,
            "invalid_request_timeout",
            f"X-Request-Timeout-Ms must be a whole number of milliseconds from 1 to {MAX_REQUEST_TIMEOUT_MS}",
        )
    return int(raw)


def refused_body(exc: APIError, service: Service) -> APIError:
    """Count a body refused by the byte budget (503) as shed; the error itself, unchanged."""
    if exc.status == 503:
        service.metrics.shed.labels("bodies_in_flight").inc()
    return exc
