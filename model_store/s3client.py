"""The S3 client of every S3 user here (the model store, the capture store): bounded in time,
and with its faults in the caller's own error type.

**Bounded.** boto's defaults (60 s connect, 60 s read, retried) let one call to a hung S3
take minutes, and every service thread waiting on it is stuck that long: management calls
hung 66-68 s and `/readyz` saw nothing. A healthy S3 sends the first byte of an answer in
well under a second, and a read timeout is the silence allowed between bytes, not the
length of a download, so a few seconds fail fast without cutting off large bundles. Two
attempts in all (botocore's "standard" mode, with backoff) ride out one dropped connection;
a call to a hung S3 gives up after about `MAX_ATTEMPTS * READ_TIMEOUT_S` (10 s), and the
caller's own retry (the follow loop's backoff, a client's `Retry-After`) does the rest.

**Faults as the caller's error.** `Guarded` wraps a client so that each call (and each page
of a paginator) that fails in transport (connection refused or closed, timeouts) or with any
S3 error answer raises the caller's error type instead of a botocore exception, which the
service would answer as a 500. The one exception is "not found" from `get_object` or
`head_object`: for a read of one key that is an answer, which the caller handles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 5.0
MAX_ATTEMPTS = 2  # in all, the first one included

_NOT_FOUND = ("NoSuchKey", "NoSuchBucket", "NotFound", "404")
_READS = ("get_object", "head_object")


def s3_client() -> Any:
    """A boto3 S3 client with the bounds above (endpoint and credentials from the AWS_* variables)."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
    )
    return boto3.client("s3", config=config)


def status_of(exc: ClientError) -> tuple[str, int]:
    """An S3 error answer's code and HTTP status."""
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status or 0)


def is_not_found(exc: ClientError) -> bool:
    code, status = status_of(exc)
    return status == 404 or code in _NOT_FOUND


def lost_race(exc: ClientError) -> bool:
    """A conditional write's condition failed: 412; 409 a concurrent conditional write; 404
    If-Match on a deleted key. An answer to the caller, not a fault of the store."""
    code, status = status_of(exc)
    return status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey")


def describe(exc: Exception) -> str:
    """One line for a botocore fault: the S3 error code, or the transport failure."""
    if isinstance(exc, ClientError):
        code, status = status_of(exc)
        return code or str(status)
    return f"{type(exc).__name__}: {exc}"


class Guarded:
    """`client`, whose failing calls raise `error("<location>: <call> failed: <why>")`."""

    def __init__(self, client: Any, error: Callable[[str], Exception], location: str) -> None:
        self._client, self._error, self._location = client, error, location

    def _fault(self, name: str, exc: Exception) -> Exception:
        return self._error(f"{self._location}: {name} failed: {describe(exc)}")

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name == "get_paginator":
            return lambda operation: _GuardedPaginator(attr(operation), self, operation)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except ClientError as exc:
                if name in _READS and is_not_found(exc):
                    raise
                if ("IfNoneMatch" in kwargs or "IfMatch" in kwargs) and lost_race(exc):
                    raise  # the caller asked for a conditional write: a lost race is its answer
                raise self._fault(name, exc) from None
            except BotoCoreError as exc:
                raise self._fault(name, exc) from None

        return call


class _GuardedPaginator:
    """A paginator's pages are requests too: each one is guarded as it is fetched."""

    def __init__(self, paginator: Any, guard: Guarded, operation: str) -> None:
        self._paginator, self._guard, self._operation = paginator, guard, operation

    def paginate(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        try:
            yield from self._paginator.paginate(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._guard._fault(self._operation, exc) from None
