"""Feedback capture: a sample of live requests, kept for inspectors to label and for the
next training run. The service writes it; `python -m training dataset --from-feedback`
reads it. A directory, or `s3://bucket/prefix` next to an S3 model store.

```
requests/<request id>/record.json  what was predicted: version, station, time, per image
                                   probability, decision, file name and sha256
requests/<request id>/<n>.<ext>    the image bytes exactly as the station sent them
labels/<request id>.json           the inspector's label for each image (or one for all)
```

A request becomes visible only once complete (a renamed directory; on S3 its record is
written after its images), so a crash never leaves a half request that a reader trusts.
Bounds (bytes, age) are enforced oldest first by `enforce`.
"""

from __future__ import annotations

import abc
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_store.errors import ModelStoreError
from model_store.fsutil import atomic_write_bytes
from model_store.manifest import sha256_bytes

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


class CaptureError(ModelStoreError):
    code = "capture_error"


class CaptureNotFound(CaptureError):
    code = "request_not_captured"


@dataclass(frozen=True)
class CapturedImage:
    data: bytes
    format: str  # JPEG, PNG or WEBP (from the header check)
    probability: float
    decision: str


def check_id(request_id: str) -> str:
    if not _ID.match(request_id):
        raise CaptureNotFound(f"{request_id!r} is not a request id")
    return request_id


class CaptureStore(abc.ABC):
    location: str

    @abc.abstractmethod
    def put_request(self, request_id: str, record: dict[str, Any], images: Sequence[CapturedImage]) -> int:
        """Keep one request (record + images) atomically; returns the bytes written."""

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
    def enforce(self, max_bytes: int, max_age_s: float) -> int:
        """Delete requests (oldest first) beyond the size and age bounds; returns how many."""


def new_record(request_id: str, version: str, station: str, images: Sequence[CapturedImage]) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "version": version,
        "station": station,
        "time": time.time(),
        "images": [
            {
                "file": f"{i}.{_EXT.get(img.format, 'bin')}",
                "sha256": sha256_bytes(img.data),
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

    def put_request(self, request_id: str, record: dict[str, Any], images: Sequence[CapturedImage]) -> int:
        check_id(request_id)
        self._requests.mkdir(parents=True, exist_ok=True)
        final = self._requests / request_id
        staging = self._requests / f".tmp-{request_id}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            written = 0
            for entry, img in zip(record["images"], images, strict=True):
                (staging / entry["file"]).write_bytes(img.data)
                written += len(img.data)
            (staging / "record.json").write_text(json.dumps(record))
            os.rename(staging, final)  # complete, or not there at all
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return written

    def record(self, request_id: str) -> dict[str, Any]:
        path = self._requests / check_id(request_id) / "record.json"
        try:
            value: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise CaptureNotFound(f"request {request_id} was not captured (or has expired)") from None
        return value

    def put_label(self, request_id: str, label: dict[str, Any]) -> None:
        self.record(request_id)  # it must exist
        atomic_write_bytes(self._labels / f"{request_id}.json", json.dumps(label).encode())

    def records(self) -> Iterator[dict[str, Any]]:
        for d in sorted(self._requests.iterdir()) if self._requests.is_dir() else []:
            if d.name.startswith(".tmp-"):
                continue
            try:
                yield json.loads((d / "record.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue

    def labels(self) -> dict[str, dict[str, Any]]:
        out = {}
        for p in self._labels.glob("*.json") if self._labels.is_dir() else []:
            try:
                out[p.stem] = json.loads(p.read_text())
            except json.JSONDecodeError:
                continue
        return out

    def image(self, request_id: str, file: str) -> bytes:
        if "/" in file or file.startswith("."):
            raise CaptureNotFound(f"{file!r} is not a captured image")
        return (self._requests / check_id(request_id) / file).read_bytes()

    def enforce(self, max_bytes: int, max_age_s: float) -> int:
        if not self._requests.is_dir():
            return 0
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
                shutil.rmtree(d, ignore_errors=True)
                (self._labels / f"{d.name}.json").unlink(missing_ok=True)
                total -= size
                removed += 1
        return removed


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
        written = 0
        for entry, img in zip(record["images"], images, strict=True):
            self._client.put_object(
                Bucket=self.bucket, Key=self._key("requests", request_id, entry["file"]), Body=img.data
            )
            written += len(img.data)
        body = json.dumps(record).encode()
        self._client.put_object(Bucket=self.bucket, Key=self._key("requests", request_id, "record.json"), Body=body)
        return written

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

    def enforce(self, max_bytes: int, max_age_s: float) -> int:
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
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
                total -= size
                removed += 1
        return removed


def open_capture(location: str | Path) -> CaptureStore:
    loc = str(location)
    if loc.startswith("s3://"):
        bucket, _, prefix = loc[5:].partition("/")
        return S3Capture(bucket, prefix)
    return FilesystemCapture(Path(loc))
