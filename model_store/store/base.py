"""The one store interface: bundle versions, the active pointer, and the audit log."""

from __future__ import annotations

import abc
import getpass
import json
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from model_store import faults
from model_store.bundle import Bundle
from model_store.errors import (
    CanaryChanged,
    CanaryConflict,
    InvalidCanary,
    InvalidVersionName,
    NotAStore,
    NothingToRollBack,
    StoreError,
    VersionRevoked,
)
from model_store.manifest import VERSION_PATTERN, Manifest
from model_store.parity import ParityProof
from model_store.rollout import STATION_PATTERN, Policy, station_share

Action = Literal["import", "activate", "rollback", "shadow", "revoke", "unrevoke", "canary", "promote", "policy"]

# The pointer state both backends keep, one JSON object:
#   active            the active version, or None
#   history           earlier active versions, the last one is where `rollback` goes
#   seq               the seq of the last committed audit entry
#   last              that entry: written with the state, appended to the log after, so
#                     the next writer (or a reader) can restore it after a crash
#   pending_import    an import whose bundle is stored but not yet logged (see the backends)
#   shadow            the version in shadow and its share of traffic, or None (absent in old stores)
#   revoked           version -> who revoked it, why, when (absent in old stores): never
#                     activated, rolled back to, shadowed or served again until un-revoked
#   canary            the version serving some stations, which ones, and the seq and time of
#                     the entry that started or changed it, or None (absent in old stores)
#   policy            the promotion policy's settings (`rollout.Policy`), or None (absent in old stores)
EMPTY_STATE: dict[str, Any] = {"active": None, "history": [], "seq": 0, "last": None, "pending_import": None}

# `fullmatch`, not `match`: `$` would accept a trailing newline ("v1\n").
_VERSION = re.compile(VERSION_PATTERN)
_STATION = re.compile(STATION_PATTERN)


def printable(text: str) -> str:
    """`text` with every non-printable character escaped (`\\n`, `\\x1b`, `\\u202e`).

    Audit actors and reasons come from API callers: a newline would forge a log line, an
    ANSI or bidi control would colour or reorder the operator's terminal. The store keeps
    them escaped, and everything that shows an entry escapes it again (entries written
    before this existed).
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def check_version_name(version: str) -> str:
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise InvalidVersionName(f"invalid version {version!r}: use 1-64 of A-Z a-z 0-9 . _ - , starting alphanumeric")
    return version


def not_a_store(location: str) -> NotAStore:
    """The refusal of every read or pointer move on a location that holds no store."""
    return NotAStore(
        f"{location} is not a model store (create one with `python -m model_store import BUNDLE` or `init`)"
    )


def crash_point(step: str) -> None:
    """A named step of a store write: `model_store.faults.crash_point` (a no-op unless a
    crash test names the step in the environment).

    The store's own crash tests also replace it, in a child process, to kill or race at
    `step`. Backends call it as `base.crash_point(...)` so the replacement is seen.
    """
    faults.crash_point(step)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def default_actor() -> str:
    """`user@host`, the audit log's actor when none is given."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class AuditEntry:
    """One line of the append-only audit log. For imports, `to` is the imported version."""

    seq: int
    time: str
    actor: str
    action: Action
    from_version: str | None
    to_version: str | None
    reason: str
    # What a decision rested on (a canary's end or promotion: the numbers it was judged on;
    # a policy change: the policy). Absent from entries written before it existed.
    evidence: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def shown(self) -> AuditEntry:
        """This entry with its free text escaped, for display (see `printable`)."""
        return replace(self, actor=printable(self.actor), reason=printable(self.reason))


@dataclass(frozen=True)
class VersionInfo:
    version: str
    name: str
    created_at: str
    manifest_sha256: str
    active: bool


@dataclass(frozen=True)
class ImportResult:
    version: str
    created: bool  # False when the identical bundle was already stored


def check_proof(proof: ParityProof, version: str, manifest_sha256: str) -> None:
    """A pointer move needs parity evidence for exactly the stored bundle."""
    if proof.version != version or proof.manifest_sha256 != manifest_sha256:
        raise StoreError(
            f"the parity proof is for {proof.version} ({proof.manifest_sha256[:12]}), "
            f"not the stored {version} ({manifest_sha256[:12]}); prove the stored bundle first"
        )


def new_entry(
    state: dict[str, Any],
    action: Action,
    actor: str,
    reason: str,
    from_version: str | None,
    to_version: str | None,
    time: str | None = None,
    evidence: dict[str, Any] | None = None,
) -> AuditEntry:
    """The audit entry that commits on top of `state`."""
    return AuditEntry(
        seq=state["seq"] + 1,
        time=time or now(),
        actor=printable(actor),
        action=action,
        from_version=from_version,
        to_version=to_version,
        reason=printable(reason),
        evidence=evidence,
    )


def committed(state: dict[str, Any], entry: AuditEntry, **changes: Any) -> dict[str, Any]:
    """`state` after `entry`: the entry rides in the state until it is in the log."""
    return {**state, **changes, "seq": entry.seq, "last": entry.to_dict()}


def activation_changes(state: dict[str, Any], version: str) -> dict[str, Any]:
    """Pointer and history after activating `version` (re-activating keeps the history)."""
    current = state["active"]
    history = list(state["history"])
    if current is not None and current != version:
        history.append(current)
    return {"active": version, "history": history, **_canary_after_activating(state, version)}


def _canary_after_activating(state: dict[str, Any], version: str) -> dict[str, Any]:
    """A running canary survives an activation or rollback of another version (its stations
    stay on it; every other station moves to the new active version), and ends when its own
    version becomes active: it would be a canary of itself."""
    canary = canary_of(state)
    if canary is None:
        return {}
    if canary.version == version:
        return {"canary": None}
    # It is now compared with another active version: a new run (its `seq` is this entry's),
    # so an evaluator that judged it against the old active version is refused, and replicas
    # compare it from zero.
    return {"canary": {**state["canary"], "seq": state["seq"] + 1}}


def rollback_target(state: dict[str, Any], proof: ParityProof) -> tuple[str, dict[str, Any]]:
    """Where `rollback` goes from `state`, and the pointer and history after it.

    The proof must be about that target: if the history changed since the caller proved
    its bundle, the caller proved the wrong one.
    """
    history = list(state["history"])
    if not history:
        raise NothingToRollBack("no earlier active version to roll back to")
    target = history.pop()
    # Refused, not skipped: going further back would activate a version nobody asked for.
    refuse_revoked(revoked_of(state), target, "roll back to it")
    if proof.version != target:
        raise StoreError(f"the store would roll back to {target}, not {proof.version}: its history changed; try again")
    return target, {"active": target, "history": history, **_canary_after_activating(state, target)}


@dataclass(frozen=True)
class Revocation:
    """A version known to be bad: refused by every pointer move and every replica."""

    version: str
    actor: str
    reason: str
    time: str


def revoked_of(state: dict[str, Any]) -> dict[str, Revocation]:
    return {v: Revocation(v, r["actor"], r["reason"], r["time"]) for v, r in (state.get("revoked") or {}).items()}


def refuse_revoked(revoked: dict[str, Revocation], version: str | None, doing: str) -> None:
    """`VersionRevoked` when `version` is revoked; `doing` says what was refused ("activate it")."""
    r = revoked.get(version) if version is not None else None
    if r is not None:
        raise VersionRevoked(
            f"version {version} is revoked (by {r.actor} at {r.time}: {r.reason or 'no reason given'}); "
            f"refusing to {doing}. Activate another version, or un-revoke it first "
            f"(`python -m model_store revoke {version} --undo --reason ...`)"
        )


def revocation_entry(
    state: dict[str, Any], version: str, *, undo: bool, actor: str, reason: str
) -> tuple[AuditEntry, dict[str, Any]]:
    """The audit entry and state change for revoking `version` (or un-revoking it)."""
    revoked = dict(state.get("revoked") or {})
    if undo:
        if version not in revoked:
            raise StoreError(f"version {version} is not revoked")
        del revoked[version]
        return new_entry(state, "unrevoke", actor, reason, None, version), {"revoked": revoked}
    if version in revoked:
        refuse_revoked(revoked_of(state), version, "revoke it again")
    if state["active"] == version:
        # Revoking what every replica serves would leave them nothing to serve: the operator
        # picks the replacement (activate, or rollback) and revokes after.
        raise StoreError(
            f"version {version} is the active version: activate another one (or roll back) first, then revoke it"
        )
    shadow = shadow_of(state)
    if shadow is not None and shadow.version == version:
        raise StoreError(f"version {version} is in shadow: stop the shadow first (`shadow --off`), then revoke it")
    canary = canary_of(state)
    if canary is not None and canary.version == version:
        raise CanaryConflict(f"version {version} is the canary: end the canary first (`canary end`), then revoke it")
    entry = new_entry(state, "revoke", actor, reason, None, version)
    revoked[version] = {"actor": entry.actor, "reason": entry.reason, "time": entry.time}
    return entry, {"revoked": revoked}


@dataclass(frozen=True)
class Shadow:
    """A stored version that scores a share of live traffic beside the active one, never
    answering a request; every replica following the store runs it."""

    version: str
    fraction: float  # of predict requests, 0 < fraction <= 1


def shadow_of(state: dict[str, Any]) -> Shadow | None:
    raw = state.get("shadow")
    return Shadow(raw["version"], float(raw["fraction"])) if raw else None


def check_fraction(fraction: float) -> float:
    if not 0 < fraction <= 1:
        raise StoreError(f"a shadow's fraction of traffic must be in (0, 1], not {fraction}")
    return fraction


def shadow_entry(
    state: dict[str, Any], version: str | None, fraction: float, actor: str, reason: str
) -> tuple[AuditEntry, dict[str, Any]]:
    """The audit entry and state change for putting `version` in shadow (None: no shadow)."""
    previous = shadow_of(state)
    note = f"[{fraction:.3g} of traffic] " if version is not None else ""
    entry = new_entry(state, "shadow", actor, note + reason, previous.version if previous else None, version)
    return entry, {"shadow": {"version": version, "fraction": fraction} if version is not None else None}


@dataclass(frozen=True)
class Canary:
    """A stored version that answers the requests of some stations, while every other station
    is served by the active version; every replica following the store serves it so."""

    version: str
    stations: tuple[str, ...]  # explicit station IDs (empty when by fraction)
    fraction: float  # share of stations by `rollout.station_share` (0.0 when a list)
    # seq of the audit entry that started or changed it, or moved the active version it is
    # compared with: identifies this canary run (evidence and evaluations are per run)
    seq: int
    since: str  # that entry's time

    def serves(self, station: str) -> bool:
        """Whether this canary answers `station`'s requests (the same answer on every replica)."""
        if self.stations:
            return station in self.stations
        return station_share(station) < self.fraction

    def describe(self) -> str:
        """Which stations, in a few words: `stations a, b` or `25% of stations`."""
        if self.stations:
            shown = ", ".join(self.stations[:5]) + (
                f" (+{len(self.stations) - 5} more)" if len(self.stations) > 5 else ""
            )
            return f"stations {shown}"
        return f"{self.fraction:.3g} of stations"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stations": list(self.stations)}


def canary_of(state: dict[str, Any]) -> Canary | None:
    raw = state.get("canary")
    if not raw:
        return None
    return Canary(raw["version"], tuple(raw["stations"]), float(raw["fraction"]), int(raw["seq"]), raw["since"])


def check_station_id(station: str) -> str:
    if not isinstance(station, str) or not _STATION.fullmatch(station):
        raise InvalidCanary(f"invalid station ID {station!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    return station


def canary_stations(stations: Sequence[str], fraction: float) -> tuple[tuple[str, ...], float]:
    """The stations of a canary, checked: a list (each ID once, in order) or a fraction in
    (0, 1], not both. Callers about to prove a bundle check this first, the store again."""
    if bool(stations) == bool(fraction):
        raise InvalidCanary("a canary serves a list of stations or a fraction of stations: give one, not both")
    if not stations and not 0 < fraction <= 1:
        raise InvalidCanary(f"a canary's fraction of stations must be in (0, 1], not {fraction}")
    return tuple(dict.fromkeys(check_station_id(s) for s in stations)), float(fraction)


def canary_entry(
    state: dict[str, Any], version: str, stations: tuple[str, ...], fraction: float, actor: str, reason: str
) -> tuple[AuditEntry, dict[str, Any]]:
    """The audit entry and state change for starting a canary of `version` (or changing the
    running one: another version, other stations). The proof is checked by the backend."""
    listed, fraction = canary_stations(stations, fraction)
    refuse_revoked(revoked_of(state), version, "make it the canary")
    if state["active"] is None:
        raise CanaryConflict("there is no active version to compare a canary with: activate one first")
    if state["active"] == version:
        raise CanaryConflict(f"version {version} is the active version already: a canary must be another version")
    previous = canary_of(state)
    shown = Canary(version, listed, fraction, 0, "")
    entry = new_entry(
        state, "canary", actor, f"[{shown.describe()}] {reason}", previous.version if previous else None, version
    )
    canary = {
        "version": version,
        "stations": list(listed),
        "fraction": shown.fraction,
        "seq": entry.seq,
        "since": entry.time,
    }
    return entry, {"canary": canary}


def running_canary(state: dict[str, Any], expect_seq: int | None) -> Canary:
    """The running canary, checked inside the atomic update: when `expect_seq` is given and
    the canary ended or changed since the caller judged it, refused (so two evaluators
    running at once cannot both act on it)."""
    canary = canary_of(state)
    if expect_seq is not None and (canary is None or canary.seq != expect_seq):
        now_ = f"seq {canary.seq}" if canary is not None else "no canary"
        raise CanaryChanged(
            f"the canary changed since it was evaluated (it was seq {expect_seq}, now {now_}); evaluate it again"
        )
    if canary is None:
        raise CanaryConflict("there is no canary")
    return canary


def end_canary_entry(
    state: dict[str, Any], actor: str, reason: str, expect_seq: int | None, evidence: dict[str, Any] | None
) -> tuple[AuditEntry, dict[str, Any]]:
    canary = running_canary(state, expect_seq)
    entry = new_entry(state, "canary", actor, reason, canary.version, None, evidence=evidence)
    return entry, {"canary": None}


def promote_entry(
    state: dict[str, Any],
    proof: ParityProof,
    actor: str,
    reason: str,
    expect_seq: int | None,
    evidence: dict[str, Any] | None,
) -> tuple[AuditEntry, dict[str, Any]]:
    """The audit entry and state change for making the canary the active version (the
    backend checks the proof against the stored bundle)."""
    canary = running_canary(state, expect_seq)
    refuse_revoked(revoked_of(state), canary.version, "promote it")
    if proof.version != canary.version:
        raise CanaryChanged(f"the canary is {canary.version}, not {proof.version}: it changed; try again")
    entry = new_entry(state, "promote", actor, reason, state["active"], canary.version, evidence=evidence)
    return entry, activation_changes(state, canary.version)  # which ends the canary


def policy_entry(
    state: dict[str, Any], policy: dict[str, Any], actor: str, reason: str
) -> tuple[AuditEntry, dict[str, Any]]:
    """Validated before it is stored (`rollout.Policy.from_dict` names a bad setting); the
    entry keeps the policy as its evidence, so the log shows what was in force when."""
    Policy.from_dict(policy)
    entry = new_entry(state, "policy", actor, reason, None, None, evidence={"policy": dict(policy)})
    return entry, {"policy": dict(policy)}


def pending_import_entry(state: dict[str, Any]) -> AuditEntry | None:
    """The import entry that completing `state["pending_import"]` commits (or None).

    Deterministic (seq from the state, actor/reason/time from the intent), so a reader can
    show an import whose bundle is already visible exactly as the next writer will log it.
    """
    pending = state.get("pending_import")
    if not pending:
        return None
    return new_entry(state, "import", pending["actor"], pending["reason"], None, pending["version"], pending["time"])


def merge_log(entries: list[AuditEntry], state: dict[str, Any]) -> list[AuditEntry]:
    """The log as committed: what was appended, plus the state's last entry if its append was lost."""
    last = state.get("last")
    if last is not None and state["seq"] > (entries[-1].seq if entries else 0):
        entries = [*entries, AuditEntry(**last)]
    return entries


class Store(abc.ABC):
    """Versions of verified bundles plus an atomically replaced active pointer.

    Moving the pointer (`activate`, `rollback`) requires a `ParityProof` of the stored
    bundle; `model_store.activation` obtains one (verify + parity) for library and CLI
    callers, the service obtains one through its serving pipeline.
    """

    location: str

    @abc.abstractmethod
    def exists(self) -> bool:
        """Whether the location holds a store (its pointer state); reads nothing else."""

    @abc.abstractmethod
    def init(self) -> bool:
        """Create an empty store; False when there already is one. `import_bundle` calls it."""

    @abc.abstractmethod
    def pointer_stamp(self) -> str:
        """An opaque token that changes whenever the pointer state changes.

        For followers (service replicas): poll this, and re-read `active_version()` only
        when it differs from the last one seen. It is cheap (a stat or a HEAD request,
        never a bundle download) and reads do not change it; activate, rollback and
        import do (an import may change it more than once). Equal stamps mean nothing
        was committed in between; different stamps only mean something may have been.
        Raises `NotAStore` where there is no store.
        """

    @abc.abstractmethod
    def import_bundle(self, bundle_dir: Path, *, actor: str, reason: str = "") -> ImportResult:
        """Verify and store a bundle directory; identical re-imports are no-ops."""

    # Every read below raises `NotAStore` where there is no store: a typo in a location
    # must not read as an empty store.

    @abc.abstractmethod
    def versions(self) -> list[VersionInfo]: ...

    @abc.abstractmethod
    def active_version(self) -> str | None: ...

    @abc.abstractmethod
    def previous_version(self) -> str | None:
        """The version `rollback` would activate, if any."""

    @abc.abstractmethod
    def manifest(self, version: str) -> Manifest:
        """The stored manifest, verified."""

    @abc.abstractmethod
    def load(self, version: str) -> Bundle:
        """The stored bundle, verified with the store's public key."""

    @abc.abstractmethod
    def activate(self, version: str, *, actor: str, reason: str = "", proof: ParityProof) -> AuditEntry:
        """Point the store at `version`, whose stored bundle `proof` must be about."""

    @abc.abstractmethod
    def rollback(self, *, actor: str, reason: str = "", proof: ParityProof) -> AuditEntry:
        """Re-activate the version that was active before the current one (`proof` is about it)."""

    @abc.abstractmethod
    def shadow(self) -> Shadow | None:
        """The version in shadow, if any."""

    @abc.abstractmethod
    def set_shadow(self, version: str | None, *, fraction: float = 0.1, actor: str, reason: str = "") -> AuditEntry:
        """Put a stored version in shadow on `fraction` of live requests, or none (`None`).

        No parity proof is needed: a shadow never answers a request, and every replica
        verifies it and runs its parity before it scores anything.
        """

    @abc.abstractmethod
    def canary(self) -> Canary | None:
        """The running canary, if any."""

    @abc.abstractmethod
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
        """Start a canary of `version` on `stations` or a `fraction` of stations, or change
        the running one (action "canary"). It answers requests, so `proof` must be about
        its stored bundle, as for `activate`."""

    @abc.abstractmethod
    def end_canary(
        self, *, actor: str, reason: str = "", expect_seq: int | None = None, evidence: dict[str, Any] | None = None
    ) -> AuditEntry:
        """End the canary (action "canary", to None): its stations return to the active version.

        No proof: the active version they return to was proven when it was activated.
        `expect_seq`: refused (`CanaryChanged`) unless the canary is still that run.
        """

    @abc.abstractmethod
    def promote_canary(
        self,
        *,
        actor: str,
        reason: str = "",
        proof: ParityProof,
        expect_seq: int | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Make the canary the active version (action "promote", history as `activate`) and
        end the canary; `proof` is about its stored bundle. `expect_seq` as for `end_canary`."""

    @abc.abstractmethod
    def policy(self) -> dict[str, Any] | None:
        """The stored promotion policy (validate with `rollout.Policy.from_dict`), if any."""

    @abc.abstractmethod
    def set_policy(self, policy: dict[str, Any], *, actor: str, reason: str = "") -> AuditEntry:
        """Store the promotion policy (action "policy"); refused when a setting is invalid."""

    @abc.abstractmethod
    def revoked(self) -> dict[str, Revocation]:
        """Revoked versions: refused by `activate`, `rollback`, `set_shadow` and every replica."""

    @abc.abstractmethod
    def revoke(self, version: str, *, actor: str, reason: str, undo: bool = False) -> AuditEntry:
        """Mark a stored version as known bad (or, `undo`, no longer), audited like a pointer move.

        The active version and the shadow cannot be revoked: move off them first.
        """

    def rollback_candidate(self) -> str:
        """The version a rollback would go to, checked before it is loaded and proved (the
        CLI's and the service's rollback both start here): `NothingToRollBack` when there
        is none, `VersionRevoked` when it is revoked."""
        target = self.previous_version()
        if target is None:
            raise NothingToRollBack("no earlier active version to roll back to")
        self.refuse_revoked(target, "roll back to it")
        return target

    def refuse_revoked(self, version: str | None, doing: str) -> None:
        """Fail early, before a bundle is loaded and proved, when `version` is revoked.

        Only a courtesy: the pointer moves themselves check again, atomically.
        """
        refuse_revoked(self.revoked(), version, doing)

    @abc.abstractmethod
    def audit_log(self) -> list[AuditEntry]:
        """Every committed change once, in seq order, even one whose log write a crash lost."""

    # --- replicas' window summaries (`model_store.fleet`) ------------------------------

    @abc.abstractmethod
    def write_summary(self, replica: str, summary: dict[str, Any]) -> None:
        """Replace `replica`'s window summary (`summaries/<replica>.json`), whole or not at all.

        Not audited and not part of the pointer state: `pointer_stamp` does not change, so
        followers are not woken. `StoreError` for a bad replica name or a summary larger
        than `MAX_SUMMARY_BYTES`.
        """

    @abc.abstractmethod
    def summaries(self, *, newer_than: float | None = None) -> list[dict[str, Any]]:
        """Every replica's last summary as written (decoded JSON), by replica name.

        An object that is larger than `MAX_SUMMARY_BYTES` or is not a JSON object comes back
        as `{"replica": NAME, "unreadable": REASON}` (`model_store.fleet` skips and names
        it): one bad object never hides the others. `newer_than` (unix seconds): objects
        last written before it are not read at all (replicas long gone).
        """


# A replica ID names its summary object: a host or pod name, or what APP_REPLICA_ID says.
REPLICA_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# The most a summary object may hold: `model_store.fleet` bounds what it writes to ~6 MB.
MAX_SUMMARY_BYTES = 8 * 1024 * 1024
SUMMARY_SUFFIX = ".json"


def check_replica_name(replica: str) -> str:
    if not isinstance(replica, str) or not REPLICA_PATTERN.fullmatch(replica):
        raise StoreError(f"invalid replica ID {replica!r}: use 1-128 of A-Z a-z 0-9 . _ - , starting alphanumeric")
    return replica


def encode_summary(summary: dict[str, Any]) -> bytes:
    data = json.dumps(summary, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_SUMMARY_BYTES:
        raise StoreError(f"a window summary of {len(data)} bytes is over the bound of {MAX_SUMMARY_BYTES}")
    return data


def decode_summary(replica: str, data: bytes | None, size: int | None = None) -> dict[str, Any]:
    """The summary object `replica` holds, or why it is unreadable (see `Store.summaries`).
    `data` None: `size` bytes were too many to read."""
    if data is None or len(data) > MAX_SUMMARY_BYTES:
        return {"replica": replica, "unreadable": f"{size or len(data or b'')} bytes, over {MAX_SUMMARY_BYTES}"}
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's depth
        return {"replica": replica, "unreadable": "not JSON"}
    if not isinstance(value, dict):
        return {"replica": replica, "unreadable": f"not a JSON object but {type(value).__name__}"}
    return value
