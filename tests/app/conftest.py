"""A store holding v1 and v2 (v1 active) and a running server over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from model_store import activation
from model_store.store import FilesystemStore
from tests.utils.server import ADMIN_TOKEN, LiveServer


@pytest.fixture
def store(tmp_path: Path, keys, bundles) -> FilesystemStore:
    s = FilesystemStore(tmp_path / "store", keys[1])
    for v in ("v1", "v2"):
        s.import_bundle(bundles[v], actor="fixture")
    activation.activate(s, "v1", actor="fixture")
    return s


@pytest.fixture
def server(store: FilesystemStore, keys) -> Iterator[LiveServer]:
    with LiveServer(store.root, keys[1], admin_token=ADMIN_TOKEN) as srv:
        srv.wait_ready()
        yield srv
