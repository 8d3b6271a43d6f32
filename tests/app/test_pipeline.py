"""The serving pipeline in process (real worker processes, no HTTP): dispatch, batching,
admission, version separation, per-image errors, crash recovery, unloading, parity."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import pytest

from app.serving.pipeline import Overloaded, RequestTooLarge, WorkerFailed
from model_store.bundle import load_bundle
from model_store.errors import TruncatedImage
from model_store.predictor import SERVING_THREADS, Predictor, torch_threads
from model_store.preprocessing import inspect
from tests.utils.bundles import failing_parity_copy
from tests.utils.factories import image_bytes
from tests.utils.pipelines import checked, load, running_pipeline

pytestmark = pytest.mark.slow  # worker processes

IMAGES = [image_bytes(300 + i, (90 + i, 70)) for i in range(12)]


@pytest.fixture(scope="module")
def expected(bundles, keys) -> dict[str, list[float]]:
    """Each version's single-image probabilities, single-threaded like a worker."""
    with torch_threads(SERVING_THREADS):
        out = {}
        for v in ("v1", "v2"):
            predictor = Predictor(load_bundle(bundles[v], keys[1]))
            out[v] = [predictor.predict([img])[0].probability for img in IMAGES]
        return out


class Batches:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, images: int, decode_s: float, forward_s: float) -> None:
        self.sizes.append(images)


@pytest.fixture
def batches() -> Iterator[Batches]:
    yield Batches()


def test_an_idle_worker_takes_an_image_at_once_and_alone(bundles, keys, expected, batches) -> None:
    async def scenario() -> list[float]:
        async with running_pipeline(workers=1, on_batch=batches) as p:
            v = await load(p, bundles["v1"], keys[1])
            return [(await p.predict(v, checked([img])))[0].probability for img in IMAGES[:4]]

    got = asyncio.run(scenario())
    assert got == expected["v1"][:4]  # alone in its batch: bit for bit the Predictor's answer
    assert batches.sizes == [1, 1, 1, 1]  # no batch wait, no waiting for company


def test_images_that_pile_up_while_workers_are_busy_share_forward_passes(bundles, keys, expected, batches) -> None:
    async def scenario() -> list[list[float]]:
        async with running_pipeline(workers=2, max_batch=8, on_batch=batches) as p:
            v = await load(p, bundles["v1"], keys[1])
            requests = [p.predict(v, checked([img])) for img in IMAGES * 2]
            return [[s.probability for s in r] for r in await asyncio.gather(*requests)]

    got = asyncio.run(scenario())
    assert [r[0] for r in got] == pytest.approx(expected["v1"] * 2, abs=1e-5)  # batched: last digits may move
    assert sum(batches.sizes) == 24
    assert len(batches.sizes) <= 12, batches.sizes  # at least two images per forward pass on average
    assert max(batches.sizes) <= 8


def test_a_batch_never_mixes_versions(bundles, keys, expected, batches) -> None:
    async def scenario() -> list[tuple[str, list[float]]]:
        async with running_pipeline(workers=1, max_batch=16, on_batch=batches) as p:
            versions = [await load(p, bundles[v], keys[1]) for v in ("v1", "v2")]
            jobs = [(versions[i % 2], IMAGES[i : i + 2]) for i in range(10)]
            results = await asyncio.gather(*(p.predict(v, checked(imgs)) for v, imgs in jobs))
            return [(v, [s.probability for s in r]) for (v, _), r in zip(jobs, results, strict=True)]

    for i, (version, probs) in enumerate(asyncio.run(scenario())):
        assert probs == pytest.approx(expected[version][i : i + 2], abs=1e-5), (i, version)
    assert sum(batches.sizes) == 20  # every image scored once
    assert max(batches.sizes) > 1  # and batched: where versions could have been mixed, they were not


def test_admission_counts_images_and_decode_work(bundles, keys) -> None:
    big = image_bytes(1, (1000, 1000))

    async def scenario() -> None:
        async with running_pipeline(workers=1, queue_bound=6, max_pending_pixels=2_500_000) as p:
            v = await load(p, bundles["v1"], keys[1])
            with pytest.raises(RequestTooLarge, match="3 megapixels"):
                await p.predict(v, checked([big, big, big]))
            first = asyncio.create_task(p.predict(v, checked([big, big])))
            await asyncio.sleep(0)
            with pytest.raises(Overloaded, match="megapixels"):
                await p.predict(v, checked([big]))  # 2 + 1 megapixels pass the bound
            await first
            assert (p.admission.images, p.admission.pixels) == (0, 0)  # everything answered is released
            small = checked([IMAGES[0]] * 5)
            tasks = [asyncio.create_task(p.predict(v, small)), asyncio.create_task(p.predict(v, small))]
            done = await asyncio.gather(*tasks, return_exceptions=True)
            assert sum(isinstance(d, Overloaded) for d in done) == 1  # 5 + 5 images pass a bound of 6

    asyncio.run(scenario())


def test_an_image_that_fails_to_decode_fails_its_request_only(bundles, keys, expected) -> None:
    broken = IMAGES[0][: len(IMAGES[0]) // 2]  # a valid header, half the data

    async def scenario() -> None:
        async with running_pipeline(workers=1, max_batch=16) as p:
            v = await load(p, bundles["v1"], keys[1])
            bad = p.predict(v, [("good.jpg", IMAGES[1], inspect(IMAGES[1])), ("bad.jpg", broken, inspect(broken))])
            good = p.predict(v, checked(IMAGES[2:5]))
            failure, fine = await asyncio.gather(bad, good, return_exceptions=True)
            assert isinstance(failure, TruncatedImage) and str(failure).startswith("bad.jpg: ")
            assert isinstance(fine, list)
            assert [s.probability for s in fine] == pytest.approx(expected["v1"][2:5], abs=1e-5)

    asyncio.run(scenario())


def test_a_worker_that_dies_is_replaced_and_only_its_batch_fails(bundles, keys, expected) -> None:
    async def scenario() -> None:
        async with running_pipeline(workers=1) as p:
            v = await load(p, bundles["v1"], keys[1])
            [pid] = p.pool.pids()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(WorkerFailed):
                await p.predict(v, checked(IMAGES[:2]))
            for _ in range(200):  # the replacement loads v1 before it takes images
                if p.pool.pids()[0] not in (None, pid):
                    break
                await asyncio.sleep(0.05)
            got = await asyncio.wait_for(p.predict(v, checked(IMAGES[:1])), timeout=60)
            assert got[0].probability == expected["v1"][0]
            assert p.pool.restarts() == 1 and p.pool.pids()[0] != pid

    asyncio.run(scenario())


def test_a_released_version_is_unloaded_and_a_pinned_one_is_not(bundles, keys, expected) -> None:
    async def scenario() -> None:
        async with running_pipeline(workers=1) as p:
            v1 = await load(p, bundles["v1"], keys[1])
            p.pin(v1)  # a request in flight
            p.release(v1)  # the loader's own pin goes
            assert (await p.predict(v1, checked(IMAGES[:1])))[0].probability == expected["v1"][0]  # still served
            p.release(v1)  # the request is answered
            with pytest.raises(KeyError):
                p.manifest(v1)

    asyncio.run(scenario())


def test_parity_runs_on_every_worker(bundles, keys, tmp_path) -> None:
    bad = failing_parity_copy(bundles["v2"], tmp_path / "v2-bad", keys[0], "v2-bad")

    async def scenario() -> None:
        async with running_pipeline(workers=2) as p:
            good = await p.parity(await load(p, bundles["v1"], keys[1]))
            assert good.passed and good.max_abs_diff == 0.0  # recorded single-threaded, as workers run
            refused = await p.parity(await load(p, bad, keys[1]))
            assert not refused.passed and refused.max_abs_diff > refused.tolerance

    asyncio.run(scenario())


def _crafted_jpeg() -> bytes:
    """~1 MB that passes the structure walk: 15 quantisation-table segments of 65,520 bytes
    each before the frame, which Pillow parses in Python table by table (~50 ms, review of
    the inline check)."""
    table = b"\x00" + bytes(range(1, 65))  # one 8-bit table of 64 values, id 0
    dqt = table * (65518 // len(table))
    segment = b"\xff\xdb" + (len(dqt) + 2).to_bytes(2, "big") + dqt
    sof = b"\xff\xc0\x00\x0b\x08\x00\x10\x00\x10\x01\x01\x11\x00"
    sos = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
    return b"\xff\xd8" + segment * 15 + sof + sos + b"\x00" * 64 + b"\xff\xd9"


def test_a_camera_frame_is_checked_at_once_and_a_long_header_off_the_event_loop(bundles, keys, monkeypatch) -> None:
    """The header check of one camera JPEG runs on the event loop (a thread hop cost more
    than the check); a JPEG whose header Pillow would parse for tens of milliseconds goes to
    the inspect threads, so one such request cannot stall every other connection."""
    import threading

    from app.serving import pipeline as module

    where: list[str] = []
    real = inspect  # what the pipeline calls (model_store.preprocessing.inspect)

    def recording(data, *args, **kwargs):
        where.append(threading.current_thread().name)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(module, "inspect", recording)
    crafted = _crafted_jpeg()
    assert len(crafted) < module.INLINE_INSPECT_BYTES  # only its header makes it dear

    async def scenario() -> None:
        async with running_pipeline(workers=1) as p:
            v = await load(p, bundles["v1"], keys[1])
            await p.inspect(v, [("camera.jpg", IMAGES[0])])
            with contextlib.suppress(Exception):  # Pillow may refuse it: where it ran is the point
                await p.inspect(v, [("crafted.jpg", crafted)])

    asyncio.run(scenario())
    assert where[0] == threading.main_thread().name
    assert where[1].startswith("inspect")
