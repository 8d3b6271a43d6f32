"""Store helpers that work on every backend: snapshots, tampering, crash points, children."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import pytest

from model_store.parity import ParityProof
from model_store.store import base
from model_store.store.base import Store
from model_store.store.filesystem import FilesystemStore
from model_store.store.s3 import S3Store
from tests.utils.bundles import snapshot

BUCKET = "model-store-tests"


def store_snapshot(store: Store) -> dict[str, bytes]:
    """Every object of a store with its bytes (no lock file): to assert nothing changed."""
    if isinstance(store, FilesystemStore):
        return snapshot(store.root) if store.root.exists() else {}
    assert isinstance(store, S3Store)
    s3 = boto3.client("s3")
    prefix = f"{store.prefix}/"
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            out[key[len(prefix) :]] = s3.get_object(Bucket=store.bucket, Key=key)["Body"].read()
    return out


def flip_stored_byte(store: Store, version: str, file: str = "model.safetensors") -> None:
    """Alter one byte of a stored bundle file where the store keeps it (disk or bucket)."""
    if isinstance(store, FilesystemStore):
        path = store.bundle_dir(version) / file
        path.chmod(0o644)
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))
        return
    assert isinstance(store, S3Store)
    sha = next(i.manifest_sha256 for i in store.versions() if i.version == version)
    s3 = boto3.client("s3")
    key = f"{store.prefix}/bundles/{sha}/{file}"
    data = bytearray(s3.get_object(Bucket=store.bucket, Key=key)["Body"].read())
    data[-1] ^= 1
    s3.put_object(Bucket=store.bucket, Key=key, Body=bytes(data))


class Crash(BaseException):
    """A simulated power cut inside this process (a BaseException: nothing catches it)."""


def crash_at(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """Make the store raise `Crash` when it reaches `step` (see `base.crash_point`)."""

    def crash_point(name: str) -> None:
        if name == step:
            raise Crash(step)

    monkeypatch.setattr(base, "crash_point", crash_point)


def record_steps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The crash points the store passes, in order, each run of one name once."""
    seen: list[str] = []

    def crash_point(name: str) -> None:
        if not seen or seen[-1] != name:
            seen.append(name)

    monkeypatch.setattr(base, "crash_point", crash_point)
    return seen


# A child process that opens the store itself and runs one operation. With a kill step,
# it SIGKILLs itself the nth time it reaches that step (exit -9); reaching the end
# instead exits 3, so a test can tell that its kill point was really reached.
_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    from model_store.parity import ParityProof
    from model_store.store import base, open_store

    location, key, spec = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    kill_step, kill_nth, torn = spec.get("kill"), spec.get("nth", 1), spec.get("torn", False)
    reached = 0

    def crash_point(name):
        global reached
        if name != kill_step:
            return
        reached += 1
        if reached == kill_nth:
            if torn:  # die halfway through appending the audit line
                with open(Path(location) / "audit.jsonl", "ab") as f:
                    f.write(b'{"action": "activate", "seq": ')
            os.kill(os.getpid(), signal.SIGKILL)

    base.crash_point = crash_point
    store = open_store(location, key)
    proofs = {v: ParityProof(v, sha, 0.0) for v, sha in spec.get("proofs", {}).items()}
    actor = spec.get("actor", "victim")
    if spec["op"] == "import":
        store.import_bundle(Path(spec["bundle"]), actor=actor, reason="killed")
    elif spec["op"] == "activate":
        store.activate(spec["version"], actor=actor, reason="killed", proof=proofs[spec["version"]])
    elif spec["op"] == "rollback":
        store.rollback(actor=actor, reason="killed", proof=proofs[spec["target"]])
    elif spec["op"] == "alternate":  # many activations, started together with another child
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(spec["count"]):
            v = spec["cycle"][i % len(spec["cycle"])]
            store.activate(v, actor=actor, reason=str(i), proof=proofs[v])
        sys.exit(0)
    sys.exit(3 if kill_step else 0)
    """
)


def child(store: Store, public_key: Path, spec: dict[str, object], *, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, store.location, str(public_key), json.dumps(spec)],
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )


def proof_fields(proofs: dict[str, ParityProof]) -> dict[str, str]:
    """Proofs the parent computed, for a child: version -> manifest sha256."""
    return {v: p.manifest_sha256 for v, p in proofs.items()}


def reopen(store: Store) -> Store:
    """Another instance on the same location, as another process would open it."""
    if isinstance(store, FilesystemStore):
        return FilesystemStore(store.root, store.public_key)
    assert isinstance(store, S3Store)
    return S3Store(store.bucket, store.prefix, store.public_key, cache_dir=store.cache_dir)


def persisted_seqs(store: Store) -> list[int]:
    """The audit entries actually written to the log (not merged from the state)."""
    if isinstance(store, FilesystemStore):
        path = store.root / "audit.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line)["seq"] for line in lines]
    return sorted(
        int(name.split("/")[-1].removesuffix(".json")) for name in store_snapshot(store) if name.startswith("audit/")
    )


def debris(store: Store) -> list[str]:
    """What a killed writer leaves that no reader uses: staged copies, state temp files."""
    if isinstance(store, FilesystemStore):
        staging = store.root / ".staging"
        found = [str(p) for p in staging.iterdir()] if staging.is_dir() else []
        return found + [str(p) for p in store.root.glob(".state.json.*.tmp")]
    # S3 writes whole objects; what a kill can leave is an upload no version names yet.
    assert isinstance(store, S3Store)
    names = store_snapshot(store)
    uploaded = {name.split("/")[1] for name in names if name.startswith("bundles/")}
    named = {json.loads(body)["manifest_sha256"] for name, body in names.items() if name.startswith("versions/")}
    return sorted(f"bundles/{sha}/" for sha in uploaded - named)
