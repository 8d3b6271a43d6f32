"""The model host in process: proving, swapping, pinning, and following a faulty store."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable

import pytest

from app.ops.model_host import ModelHost
from model_store import activation
from model_store.errors import ParityFailed, VersionRevoked
from tests.utils.bundles import failing_parity_copy, snapshot
from tests.utils.factories import image_bytes
from tests.utils.pipelines import checked, running_pipeline

pytestmark = pytest.mark.slow  # worker processes


async def _until(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def test_activation_moves_the_pointer_only_after_parity_on_every_worker(store, bundles, keys, tmp_path) -> None:
    store.import_bundle(failing_parity_copy(bundles["v2"], tmp_path / "v3", keys[0], "v3"), actor="t")

    async def scenario() -> None:
        async with running_pipeline(workers=2) as p:
            host = ModelHost(store, p)
            await host.sync_with_store()
            assert host.require().version == "v1"
            before = snapshot(store.root)
            with pytest.raises(ParityFailed, match="v3 fails parity"):
                await host.activate("v3", actor="t", reason="")
            assert snapshot(store.root) == before and host.require().version == "v1"
            with pytest.raises(KeyError):
                p.manifest("v3")  # refused and unloaded from the workers
            entry, loaded = await host.activate("v2", actor="t", reason="better")
            assert (entry.from_version, entry.to_version, loaded.parity.passed) == ("v1", "v2", True)
            assert store.active_version() == "v2" and host.require().version == "v2"

    asyncio.run(scenario())


def test_a_request_pinned_before_a_swap_finishes_on_the_old_version(store) -> None:
    img = checked([image_bytes(5)])

    async def scenario() -> None:
        async with running_pipeline(workers=1) as p:
            host = ModelHost(store, p)
            await host.sync_with_store()
            by_v1 = (await p.predict("v1", img))[0].probability
            old = host.pin()  # a request arrives
            await host.activate("v2", actor="t", reason="")
            by_v2 = (await p.predict("v2", img))[0].probability
            assert by_v2 != by_v1  # the two versions tell apart on this image
            assert (await p.predict(old.version, img))[0].probability == by_v1  # still served by v1
            host.unpin(old)  # answered: v1 leaves the workers
            with pytest.raises(KeyError):
                p.manifest("v1")
            assert p.manifest("v2").version == "v2"

    asyncio.run(scenario())


@pytest.mark.parametrize("fault", ["garbage", "directory", "missing_key", "wrong_shape"])
def test_following_survives_a_faulty_store_reports_it_and_recovers(store, fault: str) -> None:
    state = store.root / "state.json"
    good = state.read_bytes()

    def break_store() -> None:
        if fault == "garbage":
            state.write_bytes(b"{not json")
        elif fault == "directory":
            state.unlink()
            state.mkdir()
        elif fault == "missing_key":
            state.write_bytes(b"{}")
        else:
            state.write_bytes(b"[]")  # valid JSON, not an object

    def repair() -> None:
        if state.is_dir():
            shutil.rmtree(state)
        state.write_bytes(good)

    async def scenario() -> None:
        async with running_pipeline(workers=1) as p:
            host = ModelHost(store, p)
            follow = asyncio.create_task(host.follow(0.05))
            await _until(lambda: host.current is not None)
            break_store()
            await _until(lambda: host.follow_status.failures >= 2)
            assert not host.follow_status.healthy and host.follow_status.error
            assert host.require().version == "v1"  # still serving what it had
            repair()
            activation.activate(store, "v2", actor="cli")  # a later activation must still arrive
            await _until(lambda: host.current is not None and host.current.version == "v2")
            assert host.follow_status.healthy and host.follow_status.failures == 0
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)

    asyncio.run(scenario())


def test_a_replica_following_the_store_refuses_a_revoked_version(store) -> None:
    async def scenario() -> None:
        async with running_pipeline(workers=1) as p:
            refusals: list[str] = []
            host = ModelHost(store, p, on_refusal=refusals.append)
            await host.sync_with_store()
            assert host.require().version == "v1"
            store.revoke("v2", actor="ops", reason="misses dents")
            with pytest.raises(VersionRevoked, match="refusing to activate it"):
                await host.activate("v2", actor="t", reason="")
            # A tool that predates revocation (or a hand edit) points the store at v2 anyway.
            state_file = store.root / "state.json"
            state = json.loads(state_file.read_text())
            state_file.write_text(json.dumps({**state, "active": "v2", "history": [*state["history"], "v1"]}))
            await host.sync_with_store()
            assert host.require().version == "v1"  # still serving what it proved
            assert host.refused == {"v2": "version_revoked"} and refusals == ["version_revoked"]
            with pytest.raises(KeyError):
                p.manifest("v2")  # never even loaded

    asyncio.run(scenario())
