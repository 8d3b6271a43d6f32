"""Feedback capture: a sample of live requests, kept for inspectors to label and for the
next training run. The service writes it; `python -m training dataset --from-feedback`
reads it. A directory, or `s3://bucket/prefix` next to an S3 model store.

```
requests/<request id>/record.json  what was predicted: version, station, time, per image
                                   probability, decision, file name and sha256
requests/<request id>/<n>.<ext>    the image bytes exactly as the station sent them
labels/<request id>.json           the inspector's label for each image (or one for all)
images/<sha256>/<request id>       an index: the requests that hold an image with this sha256
```

`find(sha256)` reads one index folder, so a photo (or a decision receipt, which names its
photo's sha256) finds its capture without a scan, however large the capture. Index entries
are written before the request becomes visible and removed with it; `find` trusts only
complete records that list the image, so an entry a failed write left behind is skipped.

A request becomes visible only once complete (a renamed directory; on S3 its record is
written after its images), so a crash never leaves a half request that a reader trusts.
Every write is create-only: a request id is the service's own (random), and a capture once
written is never replaced, whoever tries (an inspector's label trusts what it names).
Bounds (bytes, age) are enforced oldest first by `enforce`.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from model_store.errors import ModelStoreError
from model_store.fsutil import atomic_write_bytes
from model_store.manifest import sha256_bytes

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
FIND_LIMIT = 100  # captures of one exact photo that `find` returns, newest first
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


class CaptureError(ModelStoreError):
    code = "capture_error"


class CaptureNotFound(CaptureError):
    code = "request_not_captured"


class CaptureFull(CaptureError):
    """The capture store's disk (or quota) is full."""

    code = "capture_full"


class AlreadyCaptured(CaptureError):
    code = "already_captured"

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request {request_id} is already captured; a capture is never replaced")


class Enforced(NamedTuple):
    removed: int  # requests deleted
    kept_bytes: int  # what the complete requests left take


def not_captured(request_id: str) -> CaptureNotFound:
    """The one answer for an id that is not there, expired, or another station's: nothing to tell apart."""
    return CaptureNotFound(f"request {request_id} was not captured (or has expired)")


def _fs_error(doing: str, exc: OSError) -> CaptureError:
    """An OS error as a refusal naming the problem, never the server's paths (`str(exc)` has them)."""
    reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CaptureFull(f"the capture store is full ({reason}) while {doing}; free space on it")
    return CaptureError(f"the capture store failed while {doing}: {reason}")


def encode_record(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()


def request_bytes(record: dict[str, Any], images: Sequence[CapturedImage]) -> int:
    """What one captured request takes in the store: its images and its record."""
    return sum(len(img.data) for img in images) + len(encode_record(record))


@dataclass(frozen=True)
class CapturedImage:
    data: bytes
    format: str  # JPEG, PNG or WEBP (from the header check)
    probability: float
    decision: str
    sha256: str | None = None  # when already known (the worker hashed it for a receipt)


class Found(NamedTuple):
    """A captured image: its request's record, and the record's entry for it."""

    request_id: str
    file: str
    record: dict[str, Any]


def check_sha256(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise CaptureNotFound(f"{sha256[:80]!r} is not a sha256 (64 lowercase hex digits)")
    return sha256


def _matches(
    sha256: str, newest_first: Iterable[str], record: Callable[[str], dict[str, Any] | None], limit: int
) -> list[Found]:
    """The captured images with `sha256` in the requests `newest_first` names (as the index
    lists them), up to `limit`: a record is read per request until that many are found."""
    found: list[Found] = []
    for rid in newest_first:
        value = record(rid) if _ID.match(rid) else None
        for entry in (value or {}).get("images", []):
            if entry.get("sha256") == sha256 and len(found) < limit:
                found.append(Found(rid, entry["file"], value or {}))
        if len(found) >= limit:
            break
    return found


def check_id(request_id: str) -> str:
    if not _ID.match(request_id):
        raise CaptureNotFound(f"{request_id!r} is not a request id")
    return request_id


class CaptureStore(abc.ABC):
    location: str

    @abc.abstractmethod
    def put_request(self, request_id: str, record: dict[str, Any], images: Sequence[CapturedImage]) -> int:
        """Keep one request (record + images) atomically and create-only (`AlreadyCaptured`
        if the id is taken); returns the bytes written."""

    @abc.abstractmethod
    def record(self, request_id: str) -> dict[str, Any]:
        """A captured request's record, or `CaptureNotFound`."""

    @abc.abstractmethod
    def put_label(self, request_id: str, label: dict[str, Any]) -> None:
        """Store an inspector's label for a captured request (replacing an earlier one)."""

    @abc.abstractmethod
    def records(self) -> Iterator[dict[str, Any]]:
        """Every complete captured request's record."""

    @abc.abstractmethod
    def labels(self) -> dict[str, dict[str, Any]]: ...

    @abc.abstractmethod
    def image(self, request_id: str, file: str) -> bytes: ...

    @abc.abstractmethod
    def enforce(self, max_bytes: int, max_age_s: float) -> Enforced:
        """Delete requests (oldest first) beyond the size and age bounds."""

    @abc.abstractmethod
    def find(self, sha256: str, limit: int = FIND_LIMIT) -> list[Found]:
        """The captured images whose bytes have this sha256, newest first (from the index:
        one folder read, then a record per request that holds the image)."""

    def _record_or_none(self, request_id: str) -> dict[str, Any] | None:
        try:
            return self.record(request_id)
        except CaptureNotFound:
            return None  # removed meanwhile, or an index entry a failed write left


def new_record(request_id: str, version: str, station: str, images: Sequence[CapturedImage]) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "version": version,
        "station": station,
        "time": time.time(),
        "images": [
            {
                "file": f"{i}.{_EXT.get(img.format, 'bin')}",
                "sha256": img.sha256 or sha256_bytes(img.data),
                "probability": img.probability,
                "decision": img.decision,
            }
            for i, img in enumerate(images)
        ],
    }


class FilesystemCapture(CaptureStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self._requests, self._labels = self.root / "requests", self.root / "labels"
        self._index = self.root / "images"

    def put_request(self, request_id: str, record: dict[str, Any], images: Sequence[CapturedImage]) -> int:
        check_id(request_id)
        final = self._requests / request_id
        try:
            self._requests.mkdir(parents=True, exist_ok=True)
            staging = self._requests / f".tmp-{request_id}-{uuid.uuid4().hex[:8]}"
            staging.mkdir()
        except OSError as exc:
            raise _fs_error("writing a request", exc) from None
        try:
            for entry, img in zip(record["images"], images, strict=True):
                (staging / entry["file"]).write_bytes(img.data)
            (staging / "record.json").write_bytes(encode_record(record))
            self._add_to_index(request_id, record)
            # Claim the id with mkdir, which is create-only (EEXIST), then rename onto the
            # claim: rename alone is not create-only, since onto an empty directory (another
            # writer's claim) it replaces it. Readers skip the empty claim (no record yet).
            try:
                final.mkdir()
            except FileExistsError:
                raise AlreadyCaptured(request_id) from None
            try:
                os.rename(staging, final)  # complete, or not there at all
            except BaseException:
                with contextlib.suppress(OSError):
                    final.rmdir()
                raise
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError):
                raise _fs_error(f"writing request {request_id}", exc) from None
            raise
        return request_bytes(record, images)

    def _add_to_index(self, request_id: str, record: dict[str, Any]) -> None:
        for sha256 in {entry["sha256"] for entry in record["images"]}:
            folder = self._index / sha256
            for attempt in range(3):  # `enforce` may remove the folder between the mkdir and the write
                folder.mkdir(parents=True, exist_ok=True)
                try:
                    (folder / request_id).touch()
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise

    def _remove_from_index(self, request: Path) -> None:
        try:
            record = json.loads((request / "record.json").read_bytes())
            shas = {entry.get("sha256") for entry in record["images"]}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return  # not a complete request: nothing of it is trusted by `find`
        for sha256 in shas:
            if isinstance(sha256, str) and _SHA256.match(sha256):
                (self._index / sha256 / request.name).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    (self._index / sha256).rmdir()  # only once empty

    def find(self, sha256: str, limit: int = FIND_LIMIT) -> list[Found]:
        folder = self._index / check_sha256(sha256)
        entries = []
        try:
            for p in folder.iterdir() if folder.is_dir() else []:
                with contextlib.suppress(FileNotFoundError):  # removed by `enforce` meanwhile
                    entries.append((-p.stat().st_mtime, p.name))
        except OSError as exc:
            raise _fs_error("reading the image index", exc) from None
        return _matches(sha256, (rid for _, rid in sorted(entries)), self._record_or_none, limit)

    def record(self, request_id: str) -> dict[str, Any]:
        path = self._requests / check_id(request_id) / "record.json"
        try:
            value: dict[str, Any] = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise not_captured(request_id) from None
        except OSError as exc:
            raise _fs_error(f"reading request {request_id}", exc) from None
        except ValueError:
            raise CaptureError(f"the capture store's record of request {request_id} is not valid JSON") from None
        return value

    def put_label(self, request_id: str, label: dict[str, Any]) -> None:
        self.record(request_id)  # it must exist
        try:
            atomic_write_bytes(self._labels / f"{request_id}.json", json.dumps(label).encode())
        except OSError as exc:
            raise _fs_error(f"writing the label of request {request_id}", exc) from None

    def records(self) -> Iterator[dict[str, Any]]:
        try:
            found = sorted(self._requests.iterdir()) if self._requests.is_dir() else []
        except OSError as exc:
            raise _fs_error("listing requests", exc) from None
        for d in found:
            if d.name.startswith(".tmp-"):
                continue
            try:
                yield json.loads((d / "record.json").read_bytes())
            except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
                continue  # a claim not yet complete, just removed by `enforce`, or not a request
            except OSError as exc:
                raise _fs_error(f"reading request {d.name}", exc) from None

    def labels(self) -> dict[str, dict[str, Any]]:
        out = {}
        try:
            for p in self._labels.glob("*.json") if self._labels.is_dir() else []:
                try:
                    out[p.stem] = json.loads(p.read_bytes())
                except (FileNotFoundError, json.JSONDecodeError):
                    continue  # removed by `enforce` meanwhile, or torn by hand
        except OSError as exc:
            raise _fs_error("reading labels", exc) from None
        return out

    def image(self, request_id: str, file: str) -> bytes:
        if "/" in file or file.startswith("."):
            raise CaptureNotFound(f"{file!r} is not a captured image")
        return (self._requests / check_id(request_id) / file).read_bytes()

    def enforce(self, max_bytes: int, max_age_s: float) -> Enforced:
        if not self._requests.is_dir():
            return Enforced(0, 0)
        now = time.time()
        entries = []
        for d in self._requests.iterdir():
            try:
                st = d.stat()
                size = sum(f.stat().st_size for f in d.iterdir())
            except OSError:
                continue
            if d.name.startswith(".tmp-") and now - st.st_mtime < 3600:
                continue  # a write in progress
            entries.append((st.st_mtime, size, d))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        removed = 0
        for mtime, size, d in entries:
            if d.name.startswith(".tmp-") or now - mtime > max_age_s or total > max_bytes:
                self._remove_from_index(d)
                shutil.rmtree(d, ignore_errors=True)
                (self._labels / f"{d.name}.json").unlink(missing_ok=True)
                total -= size
                removed += 1
        return Enforced(removed, total)


class S3Capture(CaptureStore):
    """The same layout in object storage; a request's record is written after its images."""

    def __init__(self, bucket: str, prefix: str, client: Any = None) -> None:
        from model_store.s3client import Guarded, s3_client  # botocore loads only for S3 capture

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.location = f"s3://{bucket}/{self.prefix}"
        # Bounded timeouts, and every S3 failure a CaptureError (503), never a botocore 500.
        # Typed loosely: boto3-stubs are a dev extra.
        self._client: Any = Guarded(client or s3_client(), CaptureError, self.location)

    def _key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def _get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            body: bytes = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return body
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket"):
                return None
            raise CaptureError(f"{self.location}: reading {key} failed: {exc}") from None

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
        for page in pages:
            yield from page.get("Contents", [])

    def put_request(self, request_id: str, record: dict[str, Any], images: Sequence[CapturedImage]) -> int:
        check_id(request_id)
        for entry, img in zip(record["images"], images, strict=True):
            self._put_new(request_id, self._key("requests", request_id, entry["file"]), img.data)
        for sha256 in {entry["sha256"] for entry in record["images"]}:
            self._client.put_object(Bucket=self.bucket, Key=self._key("images", sha256, request_id), Body=b"")
        self._put_new(request_id, self._key("requests", request_id, "record.json"), encode_record(record))
        return request_bytes(record, images)

    def _put_new(self, request_id: str, key: str, body: bytes) -> None:
        """Create-only (`If-None-Match: *`, which AWS S3, MinIO and the moto server the tests
        use check and write in one step): the first object that exists already stops the
        request before any of it is replaced. A server that ignored the header would let a
        write replace; the ids being the service's own random ones, only a 128-bit
        collision could get there (docs/security.md)."""
        from botocore.exceptions import ClientError

        from model_store.s3client import lost_race

        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as exc:
            if lost_race(exc):
                raise AlreadyCaptured(request_id) from None
            raise

    def record(self, request_id: str) -> dict[str, Any]:
        raw = self._get(self._key("requests", check_id(request_id), "record.json"))
        if raw is None:
            raise CaptureNotFound(f"request {request_id} was not captured (or has expired)")
        value: dict[str, Any] = json.loads(raw)
        return value

    def put_label(self, request_id: str, label: dict[str, Any]) -> None:
        self.record(request_id)
        self._client.put_object(
            Bucket=self.bucket, Key=self._key("labels", f"{request_id}.json"), Body=json.dumps(label).encode()
        )

    def records(self) -> Iterator[dict[str, Any]]:
        for obj in self._list("requests/"):
            if obj["Key"].endswith("/record.json"):
                raw = self._get(obj["Key"])
                if raw is not None:
                    yield json.loads(raw)

    def labels(self) -> dict[str, dict[str, Any]]:
        out = {}
        for obj in self._list("labels/"):
            raw = self._get(obj["Key"])
            if raw is not None:
                out[obj["Key"].rsplit("/", 1)[1].removesuffix(".json")] = json.loads(raw)
        return out

    def image(self, request_id: str, file: str) -> bytes:
        raw = self._get(self._key("requests", check_id(request_id), file))
        if raw is None:
            raise CaptureNotFound(f"{request_id}/{file} is not a captured image")
        return raw

    def enforce(self, max_bytes: int, max_age_s: float) -> Enforced:
        groups: dict[str, list[dict[str, Any]]] = {}
        for obj in self._list("requests/"):
            request_id = obj["Key"][len(self._key("requests")) + 1 :].split("/", 1)[0]
            groups.setdefault(request_id, []).append(obj)
        now = time.time()
        rows = sorted(
            (max(o["LastModified"].timestamp() for o in objs), sum(o["Size"] for o in objs), rid, objs)
            for rid, objs in groups.items()
        )
        total = sum(size for _, size, _, _ in rows)
        removed = 0
        for mtime, size, rid, objs in rows:
            if now - mtime > max_age_s or total > max_bytes:
                keys = [{"Key": o["Key"]} for o in objs] + [{"Key": self._key("labels", f"{rid}.json")}]
                keys += [{"Key": self._key("images", sha256, rid)} for sha256 in self._indexed_as(rid)]
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
                total -= size
                removed += 1
        return Enforced(removed, total)

    def _indexed_as(self, request_id: str) -> set[str]:
        raw = self._get(self._key("requests", request_id, "record.json")) if _ID.match(request_id) else None
        try:
            record = json.loads(raw) if raw is not None else {}
        except ValueError:
            return set()
        shas = {entry.get("sha256") for entry in record.get("images", [])}
        return {s for s in shas if isinstance(s, str) and _SHA256.match(s)}

    def find(self, sha256: str, limit: int = FIND_LIMIT) -> list[Found]:
        objs = sorted(
            self._list(f"images/{check_sha256(sha256)}/"), key=lambda o: (-o["LastModified"].timestamp(), o["Key"])
        )
        return _matches(sha256, (o["Key"].rsplit("/", 1)[1] for o in objs), self._record_or_none, limit)


def open_capture(location: str | Path) -> CaptureStore:
    loc = str(location)
    if loc.startswith("s3://"):
        bucket, _, prefix = loc[5:].partition("/")
        return S3Capture(bucket, prefix)
    return FilesystemCapture(Path(loc))
