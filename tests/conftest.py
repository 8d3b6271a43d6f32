"""Shared fixtures: real EC P-256 keys and real signed bundles, built once per session."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from model_store.signing import generate_keypair
from tests.utils.factories import make_bundle


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(private.pem, public.pem) of the trusted signer."""
    return generate_keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A second, untrusted signer."""
    return generate_keypair(tmp_path_factory.mktemp("other-keys"))


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> dict[str, Path]:
    """Two signed bundles of different weights, v1 and v2, never modified by tests."""
    root = tmp_path_factory.mktemp("bundles")
    return {v: make_bundle(root / v, keys[0], version=v, seed=i).path for i, v in enumerate(["v1", "v2"])}


@pytest.fixture
def bundle_copy(tmp_path: Path, bundles: dict[str, Path]) -> Callable[[str], Path]:
    """A private copy of a session bundle, for tests that tamper with it."""

    def copy(version: str = "v1") -> Path:
        dest = tmp_path / f"copy-{version}"
        shutil.copytree(bundles[version], dest)
        return dest

    return copy


# Fixtures that train a model, start a server or spawn processes: a test using one is an
# end-to-end test, marked `slow` so `pytest -m "not slow"` is a quick inner loop.
SLOW_FIXTURES = {"server", "finished_run", "data_dir", "exported", "ddp_run"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
