"""Which station a request comes from.

Without `APP_STATION_TOKENS_FILE`, a station names itself with `X-Station-ID` (1-64 of
`A-Z a-z 0-9 . _ -`), and any client may name any station. With it, predict and station
feedback need `Authorization: Bearer <token>`, and the station is the token's, never the
header's: a header that names another station is a 403, so nobody can write into another
station's drift window, captures or labels.

The file holds one line per station, `station-id sha256-of-token` (`#` comments and blank
lines allowed), so it holds no secret: `python -m app stations add ID --file F` prints a new
token once and appends its line. Edits take effect within `RELOAD_S` without a restart (a
stolen token is revoked by deleting its line); a file that no longer parses keeps the last
good one in force, and says so in the log and in `/readyz`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request

from app.edge.errors import APIError
from app.ops.drift import UNASSIGNED
from model_store.rollout import STATION_PATTERN

log = logging.getLogger("app.edge.stations")
STATION_HEADER = "x-station-id"
_STATION = re.compile(rf"^{STATION_PATTERN}$")
_LINE = re.compile(rf"^({STATION_PATTERN})\s+([0-9a-f]{{64}})$")
RELOAD_S = 1.0  # how often the file's stamp is looked at (on a request; one stat call)


def station_of(raw: str | None) -> str:
    """The station a request names; a malformed ID is refused (422), not guessed at."""
    if raw is None or raw == "":
        return UNASSIGNED
    if not _STATION.match(raw):
        raise APIError(
            422, "invalid_station_id", "X-Station-ID must be 1-64 characters of A-Z a-z 0-9 . _ - (it names a station)"
        )
    return raw


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokensFileInvalid(ValueError):
    pass


def parse_tokens(text: str) -> dict[str, str]:
    """digest -> station, from the file's text; `TokensFileInvalid` names the first bad line."""
    stations: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            raise TokensFileInvalid(f"line {n} is not `station-id sha256-of-token` (64 lowercase hex digits)")
        station, digest = m.groups()
        if digest in stations:
            raise TokensFileInvalid(f"line {n}: the same token digest is given to {stations[digest]} already")
        stations[digest] = station
    return stations


def add_station(path: Path, station: str) -> str:
    """A new token for `station`: its line is appended to `path` (created if missing) and the
    token returned, to be shown once; only its digest is kept."""
    if not _STATION.match(station):
        raise TokensFileInvalid("a station ID is 1-64 characters of A-Z a-z 0-9 . _ -")
    if path.exists():
        parse_tokens(path.read_text())  # never append to a file that would not load
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        newline = size > 0 and path.read_bytes()[-1:] != b"\n"
        os.write(fd, (b"\n" if newline else b"") + f"{station} {token_digest(token)}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return token


@dataclass
class StationTokens:
    """The stations' token digests, reloaded when the file changes."""

    path: Path
    error: str | None = None  # why the file on disk is not the one in force
    _stations: dict[str, str] = field(default_factory=dict)
    _stamp: tuple[int, int, int] | None = None
    _checked: float = 0.0

    @classmethod
    def load(cls, path: Path) -> StationTokens:
        """At startup: a file that does not parse stops the service (`TokensFileInvalid`)."""
        tokens = cls(Path(path))
        tokens._stations = parse_tokens(tokens.path.read_text())
        tokens._stamp = tokens._stat()
        tokens._checked = time.monotonic()
        return tokens

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_S:
            return
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            stations = parse_tokens(self.path.read_text())
        except (OSError, UnicodeDecodeError, TokensFileInvalid) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("station tokens file changed but cannot be used (%s); the last good one stays", self.error)
            return
        self._stations, self.error = stations, None
        log.info("station tokens reloaded: %d station token(s)", len(stations))

    def station_for(self, token: str) -> str | None:
        """The station a bearer token belongs to, or None."""
        self._refresh()
        # The token itself is never compared: its SHA-256 is looked up. What a lookup's
        # timing could tell a client is about digests, which do not lead back to any token
        # (the property a constant-time comparison of the tokens would give).
        return self._stations.get(token_digest(token))

    def __len__(self) -> int:
        return len(self._stations)


def bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def unauthorized(message: str) -> APIError:
    return APIError(401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="stations"'})
