"""Shared fixtures: real EC P-256 keys and real signed bundles, built once per session."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from model_store.signing import generate_keypair
from model_store.store.base import Store
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


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with the test bucket; AWS_* point every client (and child) at it."""
    import boto3

    from tests.utils.s3 import MotoServer, client_env
    from tests.utils.stores import BUCKET

    with MotoServer() as server, pytest.MonkeyPatch.context() as mp:
        for name, value in client_env(server.url).items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            mp.delenv(name, raising=False)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield server.url


@pytest.fixture(params=["filesystem", "s3"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path, keys: tuple[Path, Path]) -> Callable[..., Store]:
    """`make(name)`: a new, not yet created store on each backend, with the trusted key.

    S3 stores get a prefix of their own in the shared bucket and a cache under tmp_path.
    """
    if request.param == "filesystem":
        from model_store.store.filesystem import FilesystemStore

        return lambda name="store": FilesystemStore(tmp_path / name, keys[1])
    request.getfixturevalue("s3_server")
    from model_store.store.s3 import S3Store
    from tests.utils.stores import BUCKET

    run = uuid.uuid4().hex[:12]
    return lambda name="store": S3Store(BUCKET, f"{run}/{name}", keys[1], cache_dir=tmp_path / "cache")


# Fixtures that train a model, start a server or spawn processes: a test using one is an
# end-to-end test, marked `slow` so `pytest -m "not slow"` is a quick inner loop.
SLOW_FIXTURES = {"server", "finished_run", "data_dir", "exported", "ddp_run"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
