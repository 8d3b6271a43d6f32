"""Station identity: with a station tokens file, predict and station feedback need the
station's own token, and the station is the token's, never the header's."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.edge.stations import add_station, parse_tokens
from tests.utils.factories import image_bytes
from tests.utils.server import ADMIN_TOKEN, LiveServer, admin
from tests.utils.waiting import eventually

pytestmark = pytest.mark.slow

IMAGE = image_bytes(51, (96, 80))


def _predict(url: str, token: str | None = None, station: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "image/jpeg"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if station is not None:
        headers["X-Station-ID"] = station
    return httpx.post(f"{url}/v1/predict", content=IMAGE, headers=headers, timeout=60)


def _stations(url: str) -> set[str]:
    body = httpx.get(f"{url}/v1/monitoring", headers=admin()).json()
    return {s["station"] for s in body["stations"]}


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[Path, str, str]:
    path = tmp_path / "stations.txt"
    return path, add_station(path, "dock-1"), add_station(path, "dock-2")


def test_the_command_prints_a_token_once_and_keeps_only_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "stations.txt"
    done = subprocess.run(
        [sys.executable, "-m", "app", "stations", "add", "dock-7", "--file", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    token = done.stdout.strip()
    assert len(token) >= 40 and token not in path.read_text()
    assert list(parse_tokens(path.read_text()).values()) == ["dock-7"]


def test_the_station_is_the_tokens_and_a_spoofed_header_is_refused(store, keys, tokens) -> None:
    path, dock1, dock2 = tokens
    with LiveServer(store.root, keys[1], admin_token=ADMIN_TOKEN, station_tokens_file=path) as srv:
        srv.wait_ready()
        for r in (_predict(srv.url), _predict(srv.url, "not-a-station-token", "dock-1")):
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = _predict(srv.url, dock1, "dock-2")  # dock-1's token, dock-2's name
        assert r.status_code == 403 and r.json()["error"] == "station_mismatch", r.text
        assert _stations(srv.url) == set()  # nothing reached dock-2's (or anyone's) window
        assert _predict(srv.url, dock1).status_code == 200  # no header: the token says dock-1
        assert _predict(srv.url, dock2, "dock-2").status_code == 200
        assert _predict(srv.url, ADMIN_TOKEN, "console").status_code == 200  # the console's "try an image"
        assert _stations(srv.url) == {"dock-1", "dock-2", "console"}
        assert httpx.get(f"{srv.url}/readyz").json()["station_tokens"] == {"stations": 2, "file_error": None}


def test_a_revoked_token_stops_working_without_a_restart_and_a_broken_file_keeps_the_last_good(
    store, keys, tokens
) -> None:
    path, dock1, dock2 = tokens
    with LiveServer(store.root, keys[1], station_tokens_file=path) as srv:
        srv.wait_ready()
        assert _predict(srv.url, dock1).status_code == 200
        lines = path.read_text().splitlines()
        path.write_text(lines[1] + "\n")  # dock-1's line deleted: its token was stolen
        eventually(lambda: _predict(srv.url, dock1).status_code == 401, timeout=10, what="dock-1's token revoked")
        path.write_text("this is not a tokens file\n")
        time.sleep(1.5)
        assert _predict(srv.url, dock2).status_code == 200  # the last good file stays in force
        error = httpx.get(f"{srv.url}/readyz").json()["station_tokens"]["file_error"]
        assert error and "line 1" in error


def test_station_feedback_is_the_tokens_station(store, keys, tokens, tmp_path: Path) -> None:
    path, dock1, dock2 = tokens
    with LiveServer(
        store.root,
        keys[1],
        admin_token=ADMIN_TOKEN,
        station_tokens_file=path,
        capture_fraction=1.0,
        capture_location=str(tmp_path / "capture"),
    ) as srv:
        srv.wait_ready()
        rid = _predict(srv.url, dock1).json()["request_id"]
        label = {"request_id": rid, "labels": ["damaged"]}

        def feedback(token: str) -> httpx.Response:
            return httpx.post(f"{srv.url}/v1/feedback", json=label, headers={"Authorization": f"Bearer {token}"})

        eventually(lambda: feedback(dock1).status_code == 201, timeout=20, what="dock-1 to label its own capture")
        assert feedback(dock2).status_code == 404  # another station's capture: as if absent
        assert feedback("wrong-token-0123456789").status_code == 401
