"""Reading request bodies with bounded memory: one raw image, or multipart `files` parts.

Multipart bodies are parsed as they stream in (python-multipart's push parser): a part is
refused the moment it passes the per-image limit, the request the moment it passes the
body limit or has one image too many, so a 1 GB upload costs at most one image's worth of
memory before the 413. Nothing is spooled to disk.

Bodies of all requests together are bounded too (`ByteBudget`): each chunk is counted as it
arrives and stays counted until its request is answered, so many slow uploads at once are
refused with 503 instead of growing the front without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.edge.errors import APIError
from app.settings import BODY_TIMEOUT_S
from model_store.errors import describe_validation_errors

if TYPE_CHECKING:  # declared by python-multipart for type checkers only
    from python_multipart.multipart import MultipartCallbacks


M = TypeVar("M", bound=BaseModel)


class ClientGone(Exception):
    """The client closed the connection before its body arrived; nobody is left to answer."""


@dataclass
class ByteBudget:
    """Bytes of request bodies held in memory by all requests together."""

    limit: int
    retry_after_s: int = 1
    held: int = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[BodyHold]:
        """A request's share: what it takes is given back when the block ends."""
        hold = BodyHold(self)
        try:
            yield hold
        finally:
            self.held -= hold.taken


@dataclass
class BodyHold:
    budget: ByteBudget
    taken: int = 0

    def take(self, n: int) -> None:
        b = self.budget
        if b.held + n > b.limit:
            raise APIError(
                503,
                "overloaded",
                f"request bodies in flight would pass {b.limit} bytes (all requests together); retry shortly",
                {"Retry-After": str(b.retry_after_s)},
            )
        b.held += n
        self.taken += n


@dataclass(frozen=True)
class BodyLimits:
    max_image_bytes: int
    max_images: int
    max_request_bytes: int
    timeout_s: float = BODY_TIMEOUT_S


@contextlib.asynccontextmanager
async def _within(timeout_s: float, what: str) -> AsyncIterator[None]:
    """One deadline for a whole body, 408 past it: a single timer, not one per chunk (this
    is the hot path: a timer per chunk cost the front a few percent of its time)."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError:
        raise APIError(408, "request_timeout", f"{what} did not arrive within {timeout_s:g} s") from None


async def _chunks(request: Request, limit: int, what: str, hold: BodyHold | None = None) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, refusing more than `limit` bytes (declared or
    streamed); each counted in `hold`. Read inside `_within`, which bounds the time."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, "payload_too_large", f"{what} is {declared} bytes; the limit is {limit} bytes")
    size = 0
    stream = request.stream()
    try:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise APIError(413, "payload_too_large", f"{what} exceeds the limit of {limit} bytes")
            if hold is not None:
                hold.take(len(chunk))
            yield chunk
    except ClientDisconnect:
        raise ClientGone() from None
    finally:
        await stream.aclose()


async def read_body(
    request: Request, limit: int, what: str, timeout_s: float = BODY_TIMEOUT_S, hold: BodyHold | None = None
) -> bytes:
    """The whole body, refusing more than `limit` bytes (declared or streamed) or a slow one."""
    async with _within(timeout_s, what):
        return b"".join([chunk async for chunk in _chunks(request, limit, what, hold)])


JSON_BODY_BYTES = 64 * 1024  # management and feedback bodies: a reason, a version, a few labels


async def read_json(request: Request, model: type[M]) -> M:
    """A small JSON body validated by `model`. Routes call it only after checking the
    caller's token, so an unauthenticated body is never read, let alone parsed; it is read
    bounded (`JSON_BODY_BYTES`, 413) and within the body deadline (408)."""
    body = await read_optional_json(request, model)
    if body is None:
        raise APIError(422, "invalid_request", "a JSON body is required")
    return body


async def read_optional_json(request: Request, model: type[M]) -> M | None:
    """`read_json`, where an empty body means None."""
    timeout_s = request.app.state.service.settings.body_timeout_s
    raw = await read_body(request, JSON_BODY_BYTES, "JSON body", timeout_s)
    if not raw.strip():
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise APIError(422, "invalid_request", describe_validation_errors(exc.errors(), "body")) from None


def json_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """The OpenAPI `requestBody` of a route that reads its JSON body with `read_json`."""
    return {"required": required, "content": {"application/json": {"schema": model.model_json_schema()}}}


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_images(request: Request, limits: BodyLimits, hold: BodyHold | None = None) -> list[tuple[str, bytes]]:
    """(name, bytes) per image: a raw `image/*` body, or multipart `files` fields. Chunks are
    counted in `hold` as they arrive."""
    ctype = content_type(request)
    if ctype.startswith("image/"):
        return [("image", await read_body(request, limits.max_image_bytes, "image", limits.timeout_s, hold))]
    if ctype != "multipart/form-data":
        raise APIError(
            415,
            "unsupported_media_type",
            f"content type {ctype or '(none)'!r}: send one image as image/jpeg, image/png or image/webp, "
            "or several as multipart/form-data fields named 'files'",
        )
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise APIError(422, "invalid_multipart", "multipart/form-data needs a boundary parameter")
    parts = _Parts(limits)
    parser = MultipartParser(boundary, parts.callbacks())
    try:
        async with _within(limits.timeout_s, "multipart body"):
            async for chunk in _chunks(request, limits.max_request_bytes, "multipart body", hold):
                parser.write(chunk)
        parser.finalize()
    except (APIError, ClientGone):  # ours; a client gone is counted 499, not a parse error
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise APIError(422, "invalid_multipart", f"multipart body could not be parsed: {exc}") from None
    if not parts.finished:
        raise APIError(422, "invalid_multipart", "multipart body ends before its closing boundary")
    if not parts.images:
        raise APIError(422, "no_images", "multipart body has no 'files' fields")
    return parts.images


@dataclass
class _Parts:
    limits: BodyLimits
    images: list[tuple[str, bytes]] = field(default_factory=list)
    finished: bool = False
    _headers: dict[bytes, bytes] = field(default_factory=dict)
    _field: bytearray = field(default_factory=bytearray)
    _value: bytearray = field(default_factory=bytearray)
    _data: bytearray = field(default_factory=bytearray)
    _name: str | None = None  # display name of the current image part; None for other fields
    _other_bytes: int = 0

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        self._headers.clear()
        self._data = bytearray()
        self._name = None

    def _header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if params.get(b"name") != b"files":
            return  # another form field: read past it (bounded below), never returned
        index = len(self.images)
        if index >= self.limits.max_images:
            raise APIError(
                413,
                "too_many_images",
                f"more than {self.limits.max_images} images in one request; the limit is {self.limits.max_images}",
            )
        filename = params.get(b"filename")
        self._name = f"files[{index}]" + (f" ({filename.decode('utf-8', 'replace')[:200]})" if filename else "")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name is None:
            self._other_bytes += end - start
            if self._other_bytes > 64 * 1024:  # text fields are not part of the API
                raise APIError(413, "payload_too_large", "form fields other than 'files' exceed 64 KiB")
            return
        self._data.extend(data[start:end])
        if len(self._data) > self.limits.max_image_bytes:
            raise APIError(
                413,
                "image_too_large",
                f"{self._name} exceeds {self.limits.max_image_bytes} bytes; the limit is {self.limits.max_image_bytes}",
            )

    def _part_end(self) -> None:
        if self._name is not None:
            self.images.append((self._name, bytes(self._data)))
        self._data = bytearray()

    def _end(self) -> None:
        self.finished = True
