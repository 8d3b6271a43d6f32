"""Which station a request comes from: the `X-Station-ID` header (1-64 of `A-Z a-z 0-9 . _ -`).

Drift windows, captures and feedback are kept per station; a request that names none counts
as `unassigned` (`app.ops.drift.UNASSIGNED`).
"""

from __future__ import annotations

import re

from app.edge.errors import APIError
from app.ops.drift import UNASSIGNED

STATION_HEADER = "x-station-id"
_STATION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def station_of(raw: str | None) -> str:
    """The station a request comes from; a malformed ID is refused (422), not guessed at."""
    if raw is None or raw == "":
        return UNASSIGNED
    if not _STATION.match(raw):
        raise APIError(
            422, "invalid_station_id", "X-Station-ID must be 1-64 characters of A-Z a-z 0-9 . _ - (it names a station)"
        )
    return raw
