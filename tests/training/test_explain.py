"""Ground truth for explanations: `synth` records a box around every damage it draws, and on
the smoke model the heatmaps point into the damage more often than pointing at random would."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from model_store.explain import METHODS
from training import cli
from training.data import make_split
from training.explain import explain_eval
from training.export import export_run
from training.synth import DAMAGE, HEIGHT, REGIONS_FILE, WIDTH, _box_geometry, generate, read_regions

LABELS = ("intact", "damaged")


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_every_damage_drawer_returns_the_box_around_what_it_drew(kind: str) -> None:
    for seed in range(40):
        rng = random.Random(seed)
        front, top, _ = _box_geometry(rng)
        layer = Image.new("RGBA", (WIDTH, HEIGHT), (0, 0, 0, 0))
        box = DAMAGE[kind](ImageDraw.Draw(layer, "RGBA"), rng, rng.choice([front, top]), rng.uniform(0.3, 1.0))
        drawn = layer.getchannel("A").getbbox()  # what really got paint, x1/y1 exclusive
        assert drawn is not None
        x0, y0, x1, y1 = box
        clipped = (max(0, x0), max(0, y0), min(WIDTH, x1), min(HEIGHT, y1))
        # Everything drawn is inside the box (a pixel of anti-aliasing aside) ...
        assert drawn[0] >= clipped[0] - 1.5 and drawn[1] >= clipped[1] - 1.5, (seed, drawn, box)
        assert drawn[2] <= clipped[2] + 1.5 and drawn[3] <= clipped[3] + 1.5, (seed, drawn, box)
        # ... and the box is no bigger than what was drawn (a line's width aside), where all of
        # it is on the canvas (a mark cut by the canvas's edge may show less of itself).
        if clipped == box:
            assert drawn[0] <= x0 + 3 and drawn[1] <= y0 + 3, (seed, drawn, box)
            assert drawn[2] >= x1 - 3 and drawn[3] >= y1 - 3, (seed, drawn, box)


def test_synth_records_where_the_damage_is_on_each_damaged_photo_and_data_sets_stay_readable(
    tmp_path: Path,
) -> None:
    counts = generate(tmp_path, 24, seed=5)
    regions = read_regions(tmp_path)
    assert regions is not None
    damaged = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "damaged").iterdir())
    assert sorted(regions) == damaged and len(damaged) == counts["damaged"]
    for name, boxes in regions.items():
        assert 1 <= len(boxes) <= 3, name
        with Image.open(tmp_path / name) as img:
            w, h = img.size
        assert all(0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h for x0, y0, x1, y1 in boxes), name
    # The file beside the label folders is no image and no label: a data set reads as before.
    split = make_split(tmp_path, LABELS, seed=0, val_fraction=0.2, test_fraction=0.2)
    assert len(split.items) == 24
    (tmp_path / REGIONS_FILE).unlink()
    assert read_regions(tmp_path) is None  # a data set from before: no ground truth, no error


@pytest.fixture(scope="module")
def smoke_bundle(finished_run, keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir, _ = finished_run
    out = tmp_path_factory.mktemp("explain") / "bundle"
    export_run(run_dir, keys[0], "smoke-explain", out)
    return out


def test_heatmaps_point_into_the_damage_more_often_than_chance_on_the_smoke_model(
    smoke_bundle: Path, keys, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over every damaged photo of the smoke data set (its test split holds a dozen: too few
    to tell), the served method's heatmap maximum lies inside a damage box more often than
    the share of the seen area the damage covers (pointing at random)."""
    args = ["explain-eval", "--bundle", str(smoke_bundle), "--data", str(data_dir), "--public-key", str(keys[1])]
    assert cli.main([*args, "--split", "all", "--method", "occlusion"]) == 0
    [line] = capsys.readouterr().out.strip().splitlines()
    result: dict[str, Any] = explain_eval(smoke_bundle, keys[1], data_dir, "all", ("occlusion",))["results"][0]
    print(f"\n{line}")
    assert line.startswith(f"occlusion: pointing accuracy {result['pointing_accuracy']:.3f}")
    assert result["images"] >= 50
    assert result["pointing_accuracy"] > result["baseline"] > 0


def test_explain_eval_refuses_data_without_damage_regions_in_one_line(
    smoke_bundle: Path, keys, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "data"
    for label in LABELS:
        (broken / label).mkdir(parents=True)
        for p in sorted((data_dir / label).iterdir())[:3]:
            (broken / label / p.name).write_bytes(p.read_bytes())
    args = ["explain-eval", "--bundle", str(smoke_bundle), "--data", str(broken), "--public-key", str(keys[1])]
    assert cli.main([*args, "--split", "all"]) == 1
    assert (
        capsys.readouterr().err.strip() == f"error: {broken} has no {REGIONS_FILE}: pointing accuracy needs to "
        "know where the damage is (data from `python -m training synth` records it)"
    )
    (broken / REGIONS_FILE).write_text(json.dumps({"version": 1, "regions": {"damaged/x.jpg": [[1, 2]]}}))
    assert cli.main([*args, "--split", "all"]) == 1
    assert "is not a damage regions file" in capsys.readouterr().err


def test_the_command_line_offers_the_methods_the_service_has() -> None:
    assert cli.EXPLAIN_METHODS == METHODS
