"""S3-compatible store: one store in object storage that many service replicas share.

```
s3://BUCKET/PREFIX/
  state.json                        the pointer state (`base.EMPTY_STATE`); a prefix is a
                                    store when it has one
  bundles/<manifest sha256>/<file>  bundle files, content-addressed, so two imports of one
                                    version racing with different content never mix bytes
  versions/<version>.json           version marker: its bundle, file list, name, created_at;
                                    written after the files, so a half-uploaded version is
                                    never listed
  audit/<seq:012d>.json             one object per audit entry, created with
                                    `If-None-Match: *`: never duplicated, never overwritten
  summaries/<replica>.json          each service replica's drift windows (`model_store.fleet`),
                                    plain puts; not part of the pointer state
```

Endpoint, credentials and region come from the usual AWS variables (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`) through boto3; timeouts
and retries are bounded (`model_store.s3client`), and every S3 failure, in transport or an
error answer, is a one-line `StoreError` (the service answers 503).

**Conditional writes, not locks.** Every change is a compare-and-swap of `state.json`:
read it with its ETag, decide, `PutObject` with `If-Match: <ETag>` (`If-None-Match: *`
when `init` creates it). When another writer got there first the put fails with 412 (or
409, S3's answer to two conditional writes in flight at once); the writer re-reads the
state, re-checks its preconditions (a rollback's target may have changed) and tries again,
up to `max_attempts` times with jittered backoff. A writer that loses a race therefore
never overwrites the winner: nothing is lost. We use `If-Match` on one state object
rather than a chain of version-numbered pointers (`state/<seq>.json` created with
`If-None-Match: *`) because AWS S3 and moto 5.x (the test server) both implement
`If-Match` and `If-None-Match` on PutObject, and one object keeps a read (and
`pointer_stamp`, a HEAD) to a single request instead of a LIST for the newest pointer.
A server that silently ignored the headers would let two writers both win, so `init`
probes for both and refuses to create a store on a server that does not honour them.
Each committed state also keeps the ids of its last few commits, so a writer whose
response was lost (and whose retry then saw 412) can tell that its own write landed.

**Exactly-once audit, as in the filesystem store.** The new entry rides in the state
(`last`); after the swap it is written to `audit/<seq>.json`. Every writer first writes
the previous state's entry if it is missing, and only then swaps, so when the state says
seq N, entries 1..N-1 exist; readers merge `last`. Imports record an intent in the state
(`pending_import`) after the files are uploaded; any writer that finds an intent writes
the marker (if missing) and commits the import entry, so an import killed after its
intent is logged exactly once, and one killed before it left only unlisted files.

**Loads** download a version into a local cache keyed by its manifest sha256 (default
`$XDG_CACHE_HOME/damage-detect/bundles/<sha>/`, or the `cache_dir` option) and verify it
with `load_bundle` on every load: the cache only saves the download. A cached copy that
fails verification is downloaded again once; if the store's copy fails too, the error
stands.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from model_store.bundle import MANIFEST_FILE, Bundle, expected_files, load_bundle
from model_store.errors import BundleError, InvalidVersionName, StoreError, VersionConflict, VersionNotFound
from model_store.manifest import Manifest, sha256_bytes
from model_store.parity import ParityProof
from model_store.s3client import describe, is_not_found, lost_race, s3_client, status_of
from model_store.store import base
from model_store.store.base import (
    EMPTY_STATE,
    MAX_SUMMARY_BYTES,
    REPLICA_PATTERN,
    SUMMARY_SUFFIX,
    AuditEntry,
    Canary,
    ImportResult,
    Revocation,
    Shadow,
    Store,
    VersionInfo,
    activation_changes,
    canary_entry,
    canary_of,
    check_fraction,
    check_proof,
    check_replica_name,
    check_version_name,
    committed,
    decode_summary,
    encode_summary,
    end_canary_entry,
    merge_log,
    new_entry,
    not_a_store,
    now,
    pending_import_entry,
    policy_entry,
    promote_entry,
    refuse_revoked,
    revocation_entry,
    revoked_of,
    rollback_target,
    shadow_entry,
    shadow_of,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_SHA256 = re.compile(r"[0-9a-f]{64}")
# How many of the latest commit ids the state keeps: enough for a writer to recognise its
# own commit after a lost response even when a few others committed right after it.
_KEEP_COMMITS = 16


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    if not url.startswith("s3://"):
        raise StoreError(f"{url}: not an s3://bucket/prefix URL")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise StoreError(f"{url}: no bucket; use s3://bucket/prefix")
    return bucket, prefix.strip("/")


def default_cache_dir() -> Path:
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "damage-detect" / "bundles"


class _Unknown(StoreError):
    """A write whose outcome is unknown: it may have landed although we got an error."""


class _Stored(Exception):
    """Raised inside an import's compare-and-swap when the version already has a marker."""

    def __init__(self, marker: dict[str, Any]) -> None:
        self.marker = marker


class S3Store(Store):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        public_key: Path | None = None,
        *,
        cache_dir: Path | None = None,
        client: S3Client | None = None,
        max_attempts: int = 64,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.public_key = Path(public_key) if public_key else None
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.max_attempts = max_attempts
        self._client: S3Client = client or s3_client()  # bounded timeouts: see model_store.s3client

    def __repr__(self) -> str:
        return f"S3Store({self.location!r})"

    # --- object access: every S3 failure becomes a one-line StoreError ---------------

    def _key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def _fail(self, what: str, exc: Exception) -> StoreError:
        if isinstance(exc, ClientError) and status_of(exc)[0] == "NoSuchBucket":
            return StoreError(f"{self.location}: bucket {self.bucket!r} does not exist; create it first")
        return StoreError(f"{self.location}: {what} failed: {describe(exc)}")

    def _get(self, key: str) -> tuple[bytes, str] | None:
        """(body, ETag), or None when there is no such object (or bucket)."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read(), response["ETag"]
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise self._fail(f"reading {key}", exc) from None
        except BotoCoreError as exc:
            raise self._fail(f"reading {key}", exc) from None

    def _head(self, key: str) -> str | None:
        try:
            return self._client.head_object(Bucket=self.bucket, Key=key)["ETag"]
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise self._fail(f"reading {key}", exc) from None
        except BotoCoreError as exc:
            raise self._fail(f"reading {key}", exc) from None

    def _put(self, key: str, body: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> bool:
        """Write an object; False when its condition failed (someone else wrote first).

        Raises `_Unknown` when the write may or may not have happened (connection lost,
        server error after botocore's retries), `StoreError` when it certainly did not.
        """
        try:
            if if_match is not None:
                self._client.put_object(Bucket=self.bucket, Key=key, Body=body, IfMatch=if_match)
            elif if_none_match:
                self._client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
            else:
                self._client.put_object(Bucket=self.bucket, Key=key, Body=body)
        except ClientError as exc:
            if (if_match is not None or if_none_match) and lost_race(exc):
                return False
            if status_of(exc)[1] >= 500:
                raise _Unknown(str(self._fail(f"writing {key}", exc))) from None
            raise self._fail(f"writing {key}", exc) from None
        except BotoCoreError as exc:
            raise _Unknown(str(self._fail(f"writing {key}", exc))) from None
        return True

    def _list(self, prefix: str) -> Iterator[str]:
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"]
        except ClientError as exc:
            if is_not_found(exc):
                return
            raise self._fail(f"listing {prefix}", exc) from None
        except BotoCoreError as exc:
            raise self._fail(f"listing {prefix}", exc) from None

    def _get_json(self, key: str) -> dict[str, Any] | None:
        got = self._get(key)
        if got is None:
            return None
        try:
            value: dict[str, Any] = json.loads(got[0])
        except json.JSONDecodeError:
            raise StoreError(f"{self.location}: {key} is not valid JSON; restore it from backup") from None
        return value

    # --- reading --------------------------------------------------------------------

    def _read_state(self) -> tuple[dict[str, Any], str]:
        got = self._get(self._key("state.json"))
        if got is None:
            raise not_a_store(self.location)
        try:
            state: dict[str, Any] = json.loads(got[0])
        except json.JSONDecodeError:
            raise StoreError(f"{self.location}: state.json is not valid JSON; restore it from backup") from None
        return state, got[1]

    def exists(self) -> bool:
        return self._head(self._key("state.json")) is not None

    def pointer_stamp(self) -> str:
        # The ETag changes with the content, and every commit changes the content (seq).
        etag = self._head(self._key("state.json"))
        if etag is None:
            raise not_a_store(self.location)
        return etag

    def active_version(self) -> str | None:
        active: str | None = self._read_state()[0]["active"]
        return active

    def previous_version(self) -> str | None:
        history = self._read_state()[0]["history"]
        return history[-1] if history else None

    def _marker_key(self, version: str) -> str:
        return self._key("versions", f"{check_version_name(version)}.json")

    def _marker_or_none(self, version: str) -> dict[str, Any] | None:
        marker = self._get_json(self._marker_key(version))
        if marker is not None and (
            marker.get("version") != version
            or not _SHA256.fullmatch(str(marker.get("manifest_sha256")))
            or not isinstance(marker.get("files"), list)
            or not all(isinstance(f, str) for f in marker["files"])
        ):
            raise StoreError(f"{self.location}: the marker of {version!r} is malformed; restore it from backup")
        return marker

    def _marker(self, version: str) -> dict[str, Any]:
        marker = self._marker_or_none(version)
        if marker is None:
            if not self.exists():
                raise not_a_store(self.location)
            raise VersionNotFound(f"version {version!r} is not in the store at {self.location}")
        return marker

    def _markers(self) -> dict[str, dict[str, Any]]:
        found = {}
        for key in self._list(self._key("versions") + "/"):
            name = key.rsplit("/", 1)[-1].removesuffix(".json")
            try:
                marker = self._marker_or_none(name) if key.endswith(".json") else None
            except InvalidVersionName:
                continue  # not written by this code; never a version
            if marker is not None:
                found[name] = marker
        return found

    def versions(self) -> list[VersionInfo]:
        active = self._read_state()[0]["active"]
        out = [
            VersionInfo(v, m["name"], m["created_at"], m["manifest_sha256"], v == active)
            for v, m in self._markers().items()
        ]
        return sorted(out, key=lambda v: (v.created_at, v.version))

    def audit_log(self) -> list[AuditEntry]:
        # The state first: when it says seq N, entries 1..N-1 already exist (each writer
        # writes the previous entry before it swaps), so nothing falls between.
        state, _ = self._read_state()
        entries = []
        for key in sorted(self._list(self._key("audit") + "/")):
            raw = self._get_json(key)
            if raw is not None:
                entries.append(AuditEntry(**raw))
        entries = merge_log(entries, state)
        pending = pending_import_entry(state)
        if (
            pending is not None
            and pending.to_version is not None
            and self._head(self._marker_key(pending.to_version)) is not None
            and (not entries or entries[-1].seq < pending.seq)
        ):
            entries.append(pending)  # visible, so committed: the next writer logs exactly this
        return entries

    def _require_key(self) -> Path:
        if self.public_key is None:
            raise StoreError("this operation verifies bundles: give the trusted public key")
        return self.public_key

    def load(self, version: str) -> Bundle:
        key = self._require_key()
        marker = self._marker(version)
        sha = marker["manifest_sha256"]
        path, fresh = self._cached(marker)
        try:
            bundle = load_bundle(path, key)
        except BundleError:
            if fresh:
                raise  # the store's own copy does not verify
            _discard(path)  # a damaged cache entry: the store's copy decides
            path, _ = self._cached(marker)
            bundle = load_bundle(path, key)
        if bundle.version != version:
            raise BundleError(f"bundle stored as {version!r} says it is {bundle.version!r}")
        if bundle.manifest_sha256 != sha:
            raise BundleError(f"bundle stored as {version!r} is not the one its version marker names")
        return bundle

    def manifest(self, version: str) -> Manifest:
        return self.load(version).manifest

    def _cached(self, marker: dict[str, Any]) -> tuple[Path, bool]:
        """The local copy of a version's bundle, and whether it was just downloaded."""
        sha = marker["manifest_sha256"]
        target = self.cache_dir / sha
        if target.is_dir():
            return target, False
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_downloads(self.cache_dir)
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.cache_dir))
        try:
            for rel in marker["files"]:
                dest = partial / _safe_relpath(rel)
                got = self._get(self._key("bundles", sha, rel))
                if got is None:
                    raise BundleError(f"{self.location}: {marker['version']}: {rel} is missing from the store")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(got[0])
            try:
                os.rename(partial, target)  # whole copies only: readers never see a partial one
            except OSError:
                if not target.is_dir():
                    raise
                shutil.rmtree(partial)  # another process cached it first
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return target, True

    # --- writing --------------------------------------------------------------------

    def init(self) -> bool:
        if self.exists():
            return False
        self._probe_conditional_writes()
        return self._put(self._key("state.json"), _dump(EMPTY_STATE), if_none_match=True)

    def _probe_conditional_writes(self) -> None:
        """Refuse a server that ignores If-Match / If-None-Match: it would let writers both win."""
        probe = self._key(f".probe-{uuid.uuid4().hex}")
        self._put(probe, b"probe")
        try:
            ignores = self._put(probe, b"probe", if_none_match=True) or self._put(
                probe, b"probe", if_match='"00000000000000000000000000000000"'
            )
        finally:
            # A leftover probe object is harmless; a store on a broken server is not.
            with contextlib.suppress(ClientError, BotoCoreError):
                self._client.delete_object(Bucket=self.bucket, Key=probe)
        if ignores:
            raise StoreError(
                f"{self.location}: this S3-compatible server ignores conditional writes "
                "(If-Match / If-None-Match); the store needs them to keep concurrent writers apart"
            )

    def _write_audit(self, entry: dict[str, Any]) -> None:
        # If-None-Match: the entry for a seq is written once; a second writer's copy is a no-op.
        self._put(self._key("audit", f"{entry['seq']:012d}.json"), _dump(entry), if_none_match=True)

    def _write_audit_after_commit(self, entry: AuditEntry) -> None:
        # The change is committed and its entry is in the state, where readers see it and
        # the next writer writes it: failing the caller now would only invite a retry
        # that commits the change twice.
        with contextlib.suppress(StoreError):
            self._write_audit(entry.to_dict())

    def _write_marker(self, pending: dict[str, Any]) -> None:
        marker = {k: pending[k] for k in ("version", "manifest_sha256", "name", "created_at", "files")}
        self._put(self._marker_key(pending["version"]), _dump(marker), if_none_match=True)

    def _repair(self, state: dict[str, Any], etag: str) -> bool:
        """Finish what a dead (or slow) writer left in `state`; True if the state was swapped."""
        if state["last"] is not None:
            self._write_audit(state["last"])
        pending = state.get("pending_import")
        if not pending:
            return False
        self._write_marker(pending)  # the files were uploaded before the intent was written
        entry = pending_import_entry(state)
        assert entry is not None
        new_state = self._with_commit_id(committed(state, entry, pending_import=None), uuid.uuid4().hex, entry.seq)
        with contextlib.suppress(_Unknown):  # landed or not, the re-read that follows tells
            if self._put(self._key("state.json"), _dump(new_state), if_match=etag):
                base.crash_point("commit.state_written")
                self._write_audit_after_commit(entry)
                base.crash_point("commit.audit_written")
        return True

    @staticmethod
    def _with_commit_id(state: dict[str, Any], commit_id: str, seq: int) -> dict[str, Any]:
        commits = [*state.get("commits", []), [commit_id, seq]][-_KEEP_COMMITS:]
        return {**state, "commits": commits}

    def _swap(
        self, decide: Callable[[dict[str, Any]], tuple[dict[str, Any], AuditEntry | None] | None]
    ) -> AuditEntry | None:
        """Compare-and-swap `state.json` with `decide(current state)` until it lands.

        `decide` returns the new state and its audit entry (None for a state-only change),
        returns None when there is nothing to do, or raises to refuse. It is called again
        on the fresh state after every lost race.
        """
        mine: tuple[str, AuditEntry | None] | None = None  # our last attempt, if its fate is unknown
        for attempt in range(self.max_attempts):
            state, etag = self._read_state()
            if mine is not None:
                landed = dict(state.get("commits", [])).get(mine[0])
                if landed is not None:  # the put succeeded even though we were told otherwise
                    if mine[1] is not None:
                        self._write_audit_after_commit(mine[1])
                    return mine[1]
                mine = None
            if self._repair(state, etag):
                continue
            base.crash_point("s3.state_read")
            decision = decide(state)
            if decision is None:
                return None
            new_state, entry = decision
            commit_id = uuid.uuid4().hex
            new_state = self._with_commit_id(new_state, commit_id, new_state["seq"])
            try:
                swapped = self._put(self._key("state.json"), _dump(new_state), if_match=etag)
            except _Unknown:
                swapped = False  # the re-read tells whether it landed
            if swapped:
                if entry is not None:
                    base.crash_point("commit.state_written")
                    self._write_audit_after_commit(entry)
                    base.crash_point("commit.audit_written")
                return entry
            mine = (commit_id, entry)
            time.sleep(random.uniform(0, min(0.25, 0.005 * 2**attempt)))  # jitter: racers drift apart
        raise StoreError(f"{self.location}: the store kept changing ({self.max_attempts} attempts); try again")

    def import_bundle(self, bundle_dir: Path, *, actor: str, reason: str = "") -> ImportResult:
        key = self._require_key()
        with tempfile.TemporaryDirectory(prefix="s3-import-") as tmp:
            # A private copy, verified, is what we upload: the source could change after a check.
            copy = Path(tmp) / "bundle"
            shutil.copytree(bundle_dir, copy, symlinks=True)
            incoming = load_bundle(copy, key)
            version = check_version_name(incoming.version)
            sha = incoming.manifest_sha256
            self.init()
            stored = self._marker_or_none(version)
            if stored is not None:
                return self._already_stored(version, stored, sha)
            files = sorted(expected_files(incoming.manifest))
            for rel in files:
                # Unconditional: the key is content-addressed, so a concurrent identical
                # import writes the same bytes (or an equally valid signature).
                self._put(self._key("bundles", sha, rel), (copy / rel).read_bytes())
                base.crash_point("s3.import.uploading")
        base.crash_point("s3.import.uploaded")
        pending = {
            "version": version,
            "actor": actor,
            "reason": reason,
            "time": now(),
            "manifest_sha256": sha,
            "name": incoming.manifest.name,
            "created_at": incoming.manifest.created_at.isoformat(),
            "files": files,
        }

        def record_intent(state: dict[str, Any]) -> tuple[dict[str, Any], None]:
            marker = self._marker_or_none(version)  # pending intents were finished by _repair
            if marker is not None:
                raise _Stored(marker)
            return {**state, "pending_import": pending}, None

        try:
            self._swap(record_intent)
        except _Stored as stored_exc:
            return self._already_stored(version, stored_exc.marker, sha)
        base.crash_point("s3.import.intent_written")
        self._write_marker(pending)
        base.crash_point("s3.import.marked")
        self._swap(lambda state: None)  # its repair commits our intent, unless another writer did
        return ImportResult(version, created=True)

    def _already_stored(self, version: str, marker: dict[str, Any], sha: str) -> ImportResult:
        if marker["manifest_sha256"] == sha:
            return ImportResult(version, created=False)
        raise VersionConflict(
            f"version {version!r} is already stored with different content; give the new bundle a new version"
        )

    def _stored_manifest_sha256(self, version: str) -> str:
        """The digest of the stored manifest bytes (what a proof must be about), not the marker's claim."""
        marker = self._marker(version)
        got = self._get(self._key("bundles", marker["manifest_sha256"], MANIFEST_FILE))
        if got is None:
            raise BundleError(f"{self.location}: {version}: {MANIFEST_FILE} is missing from the store")
        return sha256_bytes(got[0])

    def activate(self, version: str, *, actor: str, reason: str = "", proof: ParityProof) -> AuditEntry:
        check_proof(proof, version, self._stored_manifest_sha256(version))  # immutable once stored

        def decide(state: dict[str, Any]) -> tuple[dict[str, Any], AuditEntry]:
            refuse_revoked(revoked_of(state), version, "activate it")
            entry = new_entry(state, "activate", actor, reason, state["active"], version)
            return committed(state, entry, **activation_changes(state, version)), entry

        entry = self._swap(decide)
        assert entry is not None
        return entry

    def rollback(self, *, actor: str, reason: str = "", proof: ParityProof) -> AuditEntry:
        digests: dict[str, str] = {}

        def decide(state: dict[str, Any]) -> tuple[dict[str, Any], AuditEntry]:
            target, changes = rollback_target(state, proof)  # re-checked on every attempt
            if target not in digests:
                digests[target] = self._stored_manifest_sha256(target)
            check_proof(proof, target, digests[target])
            entry = new_entry(state, "rollback", actor, reason, state["active"], target)
            return committed(state, entry, **changes), entry

        entry = self._swap(decide)
        assert entry is not None
        return entry

    def shadow(self) -> Shadow | None:
        return shadow_of(self._read_state()[0])

    def set_shadow(self, version: str | None, *, fraction: float = 0.1, actor: str, reason: str = "") -> AuditEntry:
        check_fraction(fraction)
        if version is not None:
            self._marker(version)  # it must be stored

        def decide(state: dict[str, Any]) -> tuple[dict[str, Any], AuditEntry]:
            if version is not None:
                refuse_revoked(revoked_of(state), version, "put it in shadow")
            entry, changes = shadow_entry(state, version, fraction, actor, reason)
            return committed(state, entry, **changes), entry

        entry = self._swap(decide)
        assert entry is not None
        return entry

    def canary(self) -> Canary | None:
        return canary_of(self._read_state()[0])

    def set_canary(
        self,
        version: str,
        *,
        stations: tuple[str, ...] | list[str] = (),
        fraction: float = 0.0,
        actor: str,
        reason: str = "",
        proof: ParityProof,
    ) -> AuditEntry:
        check_proof(proof, version, self._stored_manifest_sha256(version))  # immutable once stored

        def decide(state: dict[str, Any]) -> tuple[dict[str, Any], AuditEntry]:
            entry, changes = canary_entry(state, version, tuple(stations), fraction, actor, reason)
            return committed(state, entry, **changes), entry

        entry = self._swap(decide)
        assert entry is not None
        return entry

    def end_canary(
        self, *, actor: str, reason: str = "", expect_seq: int | None = None, evidence: dict[str, Any] | None = None
    ) -> AuditEntry:
        # No proof: the canary's stations return to the active version, proven when activated.
        def decide(state: dict[str, Any]) -> tuple[dict[str, Any], AuditEntry]:
            entry, changes = end_canary_entry(state, actor, reason, expect_seq, evidence)
            return committed(state, entry, **changes), entry

        entry = self._swap(decide)
        assert entry is not None
        return entry

    def promote_canary(
        self,
        *,
        actor: str,
        reason: str = "",
        proof: ParityProof,
        expect_seq: int | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> AuditEntry:
        digests: dict[str, str] = {}

        def decide(state: dict[str, Any]) -> tuple[dict[str, Any], AuditEntry]:
            entry, changes = promote_entry(state, proof, actor, reason, expect_seq, evidence)  # on every attempt
            version = entry.to_version
            assert version is not None
            if version not in digests:
                digests[version] = self._stored_manifest_sha256(version)
            check_proof(proof, version, digests[version])
            return committed(state, entry, **changes), entry

        entry = self._swap(decide)
        assert entry is not None
        return entry

    def policy(self) -> dict[str, Any] | None:
        policy: dict[str, Any] | None = self._read_state()[0].get("policy")
        return policy

    def set_policy(self, policy: dict[str, Any], *, actor: str, reason: str = "") -> AuditEntry:
        def decide(state: dict[str, Any]) -> tuple[dict[str, Any], AuditEntry]:
            entry, changes = policy_entry(state, policy, actor, reason)
            return committed(state, entry, **changes), entry

        entry = self._swap(decide)
        assert entry is not None
        return entry

    def revoked(self) -> dict[str, Revocation]:
        return revoked_of(self._read_state()[0])

    def revoke(self, version: str, *, actor: str, reason: str, undo: bool = False) -> AuditEntry:
        self._marker(version)  # it must be stored

        def decide(state: dict[str, Any]) -> tuple[dict[str, Any], AuditEntry]:
            entry, changes = revocation_entry(state, version, undo=undo, actor=actor, reason=reason)
            return committed(state, entry, **changes), entry

        entry = self._swap(decide)
        assert entry is not None
        return entry

    # --- replicas' window summaries (model_store.fleet) --------------------------------
    # Plain puts (a PUT replaces an object whole) outside state.json: `pointer_stamp`, its
    # ETag, never changes for them. Each replica writes only its own object.

    def write_summary(self, replica: str, summary: dict[str, Any]) -> None:
        name = check_replica_name(replica)
        data = encode_summary(summary)
        if not self.exists():
            raise not_a_store(self.location)
        self._put(self._key("summaries", f"{name}{SUMMARY_SUFFIX}"), data)

    def summaries(self, *, newer_than: float | None = None) -> list[dict[str, Any]]:
        if not self.exists():
            raise not_a_store(self.location)
        prefix = self._key("summaries") + "/"
        found: list[tuple[str, str, int]] = []  # (replica, key, size)
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix) :].removesuffix(SUMMARY_SUFFIX)
                    if not obj["Key"].endswith(SUMMARY_SUFFIX) or not REPLICA_PATTERN.fullmatch(name):
                        continue
                    if newer_than is not None and obj["LastModified"].timestamp() < newer_than:
                        continue
                    found.append((name, obj["Key"], obj["Size"]))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"listing {prefix}", exc) from None
        out = []
        for name, key, size in sorted(found):
            if size > MAX_SUMMARY_BYTES:
                out.append(decode_summary(name, None, size))
                continue
            try:
                body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
                data = body.read(MAX_SUMMARY_BYTES + 1)  # bounded even if it grew since the listing
            except ClientError as exc:
                if is_not_found(exc):
                    continue  # removed since the listing
                raise self._fail(f"reading {key}", exc) from None
            except BotoCoreError as exc:
                raise self._fail(f"reading {key}", exc) from None
            out.append(decode_summary(name, data))
        return out


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()


def _safe_relpath(rel: str) -> PurePosixPath:
    """A bundle file's path from a marker, refused if it could leave the cache directory."""
    path = PurePosixPath(rel)
    if path.is_absolute() or not path.parts or any(p in ("", ".", "..") for p in path.parts) or "\\" in rel:
        raise StoreError(f"unsafe file name {rel!r} in a version marker; the store may have been tampered with")
    return path


# A download this old was abandoned (its process was killed): no load takes an hour.
_STALE_DOWNLOAD_S = 3600


def _remove_stale_downloads(cache_dir: Path) -> None:
    cutoff = time.time() - _STALE_DOWNLOAD_S
    for path in [*cache_dir.glob(".partial-*"), *cache_dir.glob(".discard-*")]:
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)


def _discard(path: Path) -> None:
    """Move a cache entry aside before removing it, so no reader sees it half deleted."""
    aside = path.with_name(f".discard-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)
