"""POST /v1/explain against a real server and its inference workers: predict's probability bit
for bit, a grid over the image as sent and a PNG overlay, the same token rules as predict, one
image only, and explanations bounded apart from predict (503 beyond the bound, while predict
still answers)."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from PIL import Image

from app.edge.stations import add_station
from app.serving.admission import Admission, Overloaded
from app.serving.pipeline import Pipeline
from model_store.explain import forwards
from tests.utils.factories import image_bytes, parcel_photo
from tests.utils.pipelines import checked, load, running_pipeline, stopped
from tests.utils.server import ADMIN_TOKEN, LiveServer
from tests.utils.waiting import eventually

pytestmark = pytest.mark.slow

PHOTO = parcel_photo(9, size=(320, 240))
IMAGE = image_bytes(77, (96, 80))
T = TypeVar("T")


def _post(url: str, route: str, data: bytes = PHOTO, token: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "image/jpeg"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{url}/v1/{route}", content=data, headers=headers, timeout=60)


def test_explain_gives_predicts_probability_a_grid_over_the_image_and_a_png(server: LiveServer) -> None:
    for photo in (PHOTO, parcel_photo(12, size=(320, 240)), image_bytes(4, (200, 260))):
        predicted = _post(server.url, "predict", photo).json()
        r = _post(server.url, "explain", photo)
        assert r.status_code == 200, r.text
        body = r.json()
        [result] = predicted["results"]
        assert body["probability"] == result["probability"]  # equal, not close: the same served forward
        assert (body["decision"], body["threshold"]) == (result["decision"], result["threshold"])
        assert body["model"] == predicted["model"]
        width, height = Image.open(io.BytesIO(photo)).size
        assert body["image"] == {"width": width, "height": height}
        grid = body["grid"]
        rows, cols = (round(8 * height / width), 8) if width >= height else (8, round(8 * width / height))
        assert (len(grid), {len(row) for row in grid}) == (rows, {cols})
        values = [v for row in grid for v in row if v is not None]
        assert values and all(0.0 <= v <= 1.0 for v in values) and max(values) in (0.0, 1.0)
        seen = body["seen"]
        assert 0 <= seen["left"] < seen["right"] <= width and 0 <= seen["top"] < seen["bottom"] <= height
        overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
        assert overlay.format == "PNG" and overlay.size == (width, height)  # small images keep their size
        assert body["method"] == "occlusion" and body["filename"] is None


def test_the_readmes_inspector_path_runs_as_pasted(server: LiveServer, tmp_path: Path) -> None:
    """The README's curl | python example, against this server instead of `make demo`'s."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("**An inspector's path.**") :]
    [snippet] = re.findall(r"```bash\n(.*?)```", section, re.S)[:1]
    photo = tmp_path / "demo/data/damaged/parcel-000002.jpg"
    photo.parent.mkdir(parents=True)
    photo.write_bytes(PHOTO)
    code = snippet.replace("http://127.0.0.1:${DEMO_PORT:-8000}", server.url)
    code = code.replace("python -c", f"{sys.executable} -c")
    result = subprocess.run(["bash", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    decision, probability, method = result.stdout.splitlines()[0].split()
    predicted = _post(server.url, "predict").json()["results"][0]
    assert (decision, method) == (predicted["decision"], "occlusion")
    assert float(probability) == round(predicted["probability"], 4)
    assert len(result.stdout.splitlines()) == 1 + 6  # 320 x 240: 6 rows of 8 cells
    with Image.open(tmp_path / "overlay.png") as overlay:
        assert overlay.size == (320, 240)


def test_explain_takes_one_multipart_image_and_refuses_two_or_a_bad_one(server: LiveServer) -> None:
    r = httpx.post(f"{server.url}/v1/explain", files=[("files", ("parcel.jpg", PHOTO))], timeout=60)
    assert r.status_code == 200 and r.json()["filename"] == "files[0] (parcel.jpg)", r.text
    two = [("files", ("a.jpg", PHOTO)), ("files", ("b.jpg", PHOTO))]
    r = httpx.post(f"{server.url}/v1/explain", files=two, timeout=60)
    assert (r.status_code, r.json()["error"]) == (422, "one_image_only"), r.text
    r = _post(server.url, "explain", b"not an image at all")
    assert (r.status_code, r.json()["error"]) == (422, "not_an_image"), r.text
    r = _post(server.url, "explain", PHOTO[: len(PHOTO) // 2])  # a valid header: refused by the worker's decode
    assert (r.status_code, r.json()["error"]) == (422, "truncated_image"), r.text
    assert r.json()["message"].startswith("image: ")  # named, as predict names it


def test_explain_needs_a_station_or_the_management_token_where_tokens_are_required(store, keys, tmp_path: Path) -> None:
    path = tmp_path / "stations.txt"
    dock = add_station(path, "dock-1")
    with LiveServer(store.root, keys[1], admin_token=ADMIN_TOKEN, station_tokens_file=path) as srv:
        srv.wait_ready()
        for token in (None, "not-a-station-token-at-all"):
            r = _post(srv.url, "explain", token=token)
            assert (r.status_code, r.json()["error"]) == (401, "unauthorized"), r.text
        assert _post(srv.url, "explain", token=dock).status_code == 200
        assert _post(srv.url, "explain", token=ADMIN_TOKEN).status_code == 200


def test_explanations_past_the_bound_get_503_while_predict_still_answers(store, keys) -> None:
    """One explanation at a time (the default): one held by a stopped worker; a second is
    refused at once; predictions go to the other worker meanwhile."""
    with LiveServer(store.root, keys[1], workers=2, batch_timeout_s=60.0) as srv:
        srv.wait_ready()
        pipeline = srv.app.state.service.host.pipeline
        first: list[httpx.Response] = []
        with stopped(pipeline.pool.pids()[0]):  # the first idle worker takes the explanation
            holder = threading.Thread(target=lambda: first.append(_post(srv.url, "explain")))
            holder.start()
            eventually(lambda: pipeline.admission.explains == 1, timeout=30, what="the explanation to be admitted")
            assert pipeline.pool.workers[0].busy and not pipeline.pool.workers[1].busy  # held where we stopped it
            r = _post(srv.url, "explain")
            assert (r.status_code, r.json()["error"]) == (503, "overloaded"), r.text
            assert r.headers["retry-after"] and "explanation(s) already running" in r.json()["message"]
            for _ in range(3):
                assert _post(srv.url, "predict").status_code == 200
        holder.join(timeout=60)
        assert first[0].status_code == 200, first[0].text  # the held one is answered once its worker runs
        assert pipeline.admission.explains == 0
        assert _post(srv.url, "explain").status_code == 200


def test_admission_counts_an_explanation_apart_and_never_against_predict() -> None:
    a = Admission(queue_bound=100, max_pending_pixels=10_000_000, explain_bound=1)
    cost = forwards("occlusion")
    assert cost == 50
    a.admit(60, 1_000_000)
    with pytest.raises(Overloaded, match="station work comes first"):
        a.admit_explain(cost, 1_000)  # 60 station images + 50 would pass the bound: stations first
    a.answered(500_000)
    a.answered(500_000)
    a.images = 40
    a.admit_explain(cost, 1_000)
    with pytest.raises(Overloaded, match="already running"):
        a.admit_explain(cost, 1_000)
    a.admit(60, 1_000_000)  # a station request never counts explanations: 40 + 60 = the bound
    a.explained()
    assert a.explains == 0


def test_an_explanation_waits_while_station_images_are_queued_and_keeps_its_slot_until_answered(bundles, keys) -> None:
    """One worker, stopped on a station image: an explanation and a later station image queue
    behind it. The station image goes first; an explanation whose client left keeps its slot
    until its worker is done with it."""
    photo = parcel_photo(9, size=(320, 240))
    done: list[str] = []

    async def timed(name: str, coro: Awaitable[T]) -> T:
        result = await coro
        done.append(name)
        return result

    async def scenario() -> None:
        async with running_pipeline(workers=1) as p:
            v = await load(p, bundles["v1"], keys[1])
            alone = (await p.predict(v, checked([photo])))[0].probability
            with stopped(_pid(p)):
                held = asyncio.create_task(timed("held", p.predict(v, checked([IMAGE]))))
                await _until(lambda: p.pool.workers[0].busy)
                explained = asyncio.create_task(timed("explain", p.explain(v, checked([photo])[0])))
                await _until(lambda: p.admission.explains == 1)
                later = asyncio.create_task(timed("later", p.predict(v, checked([IMAGE]))))
                await asyncio.sleep(0.2)
            await asyncio.gather(held, later, explained)
            assert done == ["held", "later", "explain"]
            e = explained.result()
            assert e.probability == alone and e.overlay_png.startswith(b"\x89PNG")

            # A client that leaves: its slot stays taken while the worker still explains.
            with stopped(_pid(p)):
                gone = asyncio.create_task(p.explain(v, checked([photo])[0]))
                await _until(lambda: p.pool.workers[0].busy)
                gone.cancel()
                await asyncio.gather(gone, return_exceptions=True)
                assert p.admission.explains == 1
                with pytest.raises(Overloaded):
                    await p.explain(v, checked([photo])[0])
            await _until(lambda: p.admission.explains == 0)
            assert (await p.explain(v, checked([photo])[0])).probability == alone

    asyncio.run(scenario())


async def _until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _pid(p: Pipeline) -> int:
    pid = p.pool.pids()[0]
    assert pid is not None
    return pid
