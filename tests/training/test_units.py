"""Synth, split, config, metrics and checkpoint units."""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model_store.preprocessing import decode
from training import metrics as M
from training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from training.config import ConfigError, load_config
from training.data import DataError, SplitManifest, check_matches, check_no_leakage, make_split
from training.progress import log_stderr, progress
from training.synth import PHOTO_SIZE, generate

LABELS = ("intact", "damaged")


def test_synth_is_deterministic_and_decodable(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    counts = generate(a, 24, seed=5)
    generate(b, 24, seed=5)
    generate(c, 24, seed=6)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert len(files) == 24 and counts["intact"] > 0 and counts["damaged"] > 0
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any(not (c / f).exists() or (a / f).read_bytes() != (c / f).read_bytes() for f in files)
    img = decode((a / files[0]).read_bytes())
    assert img.size == PHOTO_SIZE == (640, 480)


def test_split_is_deterministic_stratified_and_leak_free(tmp_path: Path) -> None:
    generate(tmp_path, 100, seed=1)
    # A duplicate of one file under another name must land in the same split.
    first = sorted((tmp_path / "damaged").iterdir())[0]
    shutil.copy(first, tmp_path / "damaged" / "copy-of-first.jpg")
    s1 = make_split(tmp_path, LABELS, seed=3, val_fraction=0.2, test_fraction=0.2)
    s2 = make_split(tmp_path, LABELS, seed=3, val_fraction=0.2, test_fraction=0.2)
    s3 = make_split(tmp_path, LABELS, seed=4, val_fraction=0.2, test_fraction=0.2)
    assert s1.sha256 == s2.sha256 and s1.sha256 != s3.sha256
    assert s1.fingerprint == s3.fingerprint  # same data, different split
    by_path = {i.path: i for i in s1.items}
    assert by_path[first.relative_to(tmp_path).as_posix()].split == by_path["damaged/copy-of-first.jpg"].split
    for label in LABELS:
        n = sum(i.label == label for i in s1.items)
        n_test = sum(i.label == label and i.split == "test" for i in s1.items)
        assert abs(n_test - 0.2 * n) <= 2  # stratified per label
    assert SplitManifest.from_json_bytes(s1.to_json_bytes()).sha256 == s1.sha256


def test_same_image_under_both_labels_is_refused(tmp_path: Path) -> None:
    generate(tmp_path, 20, seed=1)
    src = sorted((tmp_path / "intact").iterdir())[0]
    shutil.copy(src, tmp_path / "damaged" / "mislabelled.jpg")
    with pytest.raises(DataError, match="labelled both"):
        make_split(tmp_path, LABELS, 0, 0.2, 0.2)


def test_hand_edited_manifest_with_leakage_is_refused(tmp_path: Path) -> None:
    generate(tmp_path, 30, seed=1)
    s = make_split(tmp_path, LABELS, 0, 0.2, 0.2)
    data = json.loads(s.to_json_bytes())
    data["files"].append(
        {**data["files"][0], "path": "x.jpg", "split": "test" if data["files"][0]["split"] != "test" else "train"}
    )
    with pytest.raises(DataError, match="leakage"):
        check_no_leakage(SplitManifest.from_json_bytes(json.dumps(data).encode()))


@pytest.mark.parametrize("change", ["modify", "add", "remove"])
def test_data_that_no_longer_matches_the_manifest_is_refused(tmp_path: Path, change: str) -> None:
    generate(tmp_path, 30, seed=1)
    s = make_split(tmp_path, LABELS, 0, 0.2, 0.2)
    check_matches(s, tmp_path)
    victim = sorted((tmp_path / "intact").iterdir())[0]
    if change == "modify":
        victim.write_bytes(victim.read_bytes() + b"\0")
    elif change == "add":
        shutil.copy(victim, tmp_path / "intact" / "new.jpg")
    else:
        victim.unlink()
    with pytest.raises(DataError, match="no longer matches"):
        check_matches(s, tmp_path)


def test_layout_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        make_split(tmp_path / "nope", LABELS, 0, 0.2, 0.2)
    (tmp_path / "intact").mkdir()
    with pytest.raises(DataError, match="no damaged/ folder"):
        make_split(tmp_path, LABELS, 0, 0.2, 0.2)
    (tmp_path / "damaged").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "intact" / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match="broken"):
        make_split(tmp_path, LABELS, 0, 0.2, 0.2)


def test_config_refuses_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[optim]\nepochs = 3\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.learning_rate: unknown key"):
        load_config(cfg)
    cfg.write_text("[optim]\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"optim\.epochs"):
        load_config(cfg, ["optim.epochs=0"])
    with pytest.raises(ConfigError, match="crop 300 is larger than resize 144"):
        load_config(cfg, ["preprocessing.crop=300"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(cfg, ["optim.epochs"])


def test_config_overrides_are_typed_and_change_the_digest() -> None:
    base = load_config(None)
    c = load_config(None, ["optim.lr=0.01", "augment.crop_scale=[0.5, 1.0]", "model.architecture=resnet18"])
    assert c.optim.lr == 0.01 and c.augment.crop_scale == (0.5, 1.0) and c.model.architecture == "resnet18"
    assert c.sha256 != base.sha256
    assert c.sha256 == hashlib.sha256(c.to_json_bytes()).hexdigest()  # the digest is of the saved config


def test_shipped_configs_are_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    assert load_config(root / "default.toml").model.architecture == "mobilenet_v3_small"
    assert load_config(root / "smoke.toml").optim.epochs <= 3
    finetune = load_config(root / "finetune.toml")
    assert finetune.model.pretrained.endswith(".safetensors")
    assert finetune.optim.lr < load_config(root / "default.toml").optim.lr


def test_ranking_metrics_on_known_cases() -> None:
    y = [0, 0, 1, 1]
    assert M.roc_auc([0.1, 0.2, 0.8, 0.9], y) == 1.0
    assert M.roc_auc([0.9, 0.8, 0.2, 0.1], y) == 0.0
    assert M.roc_auc([0.5, 0.5, 0.5, 0.5], y) == 0.5
    assert M.roc_auc([0.1, 0.4, 0.35, 0.8], y) == 0.75
    assert M.average_precision([0.1, 0.2, 0.8, 0.9], y) == 1.0
    assert M.average_precision([0.1, 0.4, 0.35, 0.8], y) == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_threshold_minimises_expected_cost() -> None:
    probs = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9]
    y = [0, 0, 1, 0, 0, 1, 1, 1]
    # Misses cost 10x false alarms: the threshold drops below the lone positive at 0.3.
    op = M.choose_threshold(probs, y, method="min_expected_cost", cost_false_alarm=1, cost_miss=10)
    assert 0.2 < op.threshold < 0.3 and op.fn == 0 and op.fp == 2
    # Equal costs: cutting between 0.6 and 0.7 costs one miss, which beats any other cut.
    op = M.choose_threshold(probs, y, method="min_expected_cost", cost_false_alarm=1, cost_miss=1)
    assert 0.6 < op.threshold < 0.7 and (op.fp, op.fn) == (0, 1) and op.expected_cost == pytest.approx(1 / 8)
    # Target recall 0.75: the highest threshold catching 3 of 4 positives.
    op = M.choose_threshold(probs, y, method="target_recall", cost_false_alarm=1, cost_miss=1, target_recall=0.75)
    assert 0.6 < op.threshold < 0.7 and op.recall == 0.75


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state(), "epoch": 1})
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoint_with_arbitrary_objects_is_not_unpickled(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "executed",))

    with open(tmp_path / "evil.pt", "wb") as f:
        torch.save({"format": 1, "x": Evil()}, f, pickle_module=pickle)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "executed").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stderr_is_a_terminal", [False, True])
def test_progress_draws_a_bar_only_on_a_terminal(monkeypatch, stderr_is_a_terminal: bool) -> None:
    # A log file or pipe (CI, `make demo | tee`) must not fill with carriage-return bar frames.
    err = _Terminal() if stderr_is_a_terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(progress(range(50), desc="epoch 1")) == list(range(50))
    log_stderr("epoch 1/2  train_loss 0.5")
    if stderr_is_a_terminal:
        assert "\r" in err.getvalue() and "epoch 1" in err.getvalue()
    else:
        assert err.getvalue() == "epoch 1/2  train_loss 0.5\n"
