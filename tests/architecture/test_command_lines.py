"""Every command line, as a user types it: the console commands are installed, and every
subcommand given a bad value refuses in one `error:` line with exit 1 or 2, never a traceback."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from model_store.store import FilesystemStore

pytestmark = pytest.mark.slow  # subprocesses

CONSOLE_COMMANDS = {"damage-store": "model_store", "damage-train": "training", "damage-serve": "app"}

# (module, subcommand, arguments as typed): a bad value for each subcommand of each CLI. Placeholders:
# {tmp} a scratch directory, {file} a regular file, {store} an empty store, {key}/{pub} the
# trusted key pair, {bundle} a signed bundle.
BAD_VALUES: list[tuple[str, str, str]] = [
    ("model_store", "keygen", "keygen --out {file}/keys"),
    ("model_store", "verify", "verify {tmp}/no-such-bundle --public-key {pub}"),
    ("model_store", "verify", "verify {bundle} --public-key {tmp}/no-such-key.pem"),
    ("model_store", "init", "init --store {file}/store"),
    ("model_store", "import", "import {tmp}/no-such-bundle --store {store} --public-key {pub}"),
    ("model_store", "list", "list --store {tmp}/demo/stor"),
    ("model_store", "show", "show 'demo 3' --store {store} --public-key {pub}"),
    ("model_store", "activate", "activate 'demo 3' --store {store} --public-key {pub}"),
    ("model_store", "rollback", "rollback --store {tmp}/demo/stor --public-key {pub}"),
    ("model_store", "shadow", "shadow v1 --fraction 'a tenth' --store {store}"),
    ("model_store", "shadow", "shadow v1 --fraction 1.5 --store {store}"),
    ("model_store", "canary", "canary start v1 --fraction half --store {store}"),
    ("model_store", "canary", "canary start v1 --stations 'dock 1' --store {store} --public-key {pub}"),
    ("model_store", "canary", "canary end --store {store}"),
    ("model_store", "revoke", "revoke 'demo 3' --reason bad --store {store}"),
    ("model_store", "revoke", "revoke v1 --store {store}"),
    ("model_store", "log", "log --store {tmp}/demo/stor"),
    ("model_store", "receipt", "receipt verify not-a-receipt --receipt-key {pub}"),
    ("model_store", "receipt", "receipt verify a.b.c --receipt-key {tmp}/no-such-key.pem"),
    ("model_store", "receipt", "receipt verify a.b.c"),
    ("model_store", "receipt", "receipt key {file}"),
    ("model_store", "receipt", "receipt replay a.b.c {file} --capture {tmp} --receipt-key {pub}"),
    ("model_store", "receipt", "receipt find 0123abcd --capture {tmp} --receipt-key {pub}"),
    ("model_store", "receipt", "receipt find " + "0" * 64 + " --capture {tmp}/no-capture"),
    ("training", "synth", "synth --out {tmp}/data --count many"),
    ("training", "synth", "synth --out {file}/data --count 4"),
    ("training", "train", "train --data {tmp} --run-dir {tmp}/run --set optim.lr=fast"),
    ("training", "train", "train --data {tmp} --run-dir {tmp}/run --set optim.lr"),
    ("training", "train", "train --config {tmp}/no-such.toml --data {tmp} --run-dir {tmp}/run"),
    ("training", "export", "export --run {tmp} --key {key} --version 'demo 3' --out {tmp}/b"),
    ("training", "export", "export --run {tmp}/no-run --key {key} --version v3 --out {tmp}/b"),
    ("training", "evaluate", "evaluate --bundle {tmp}/no-such-bundle --data {tmp} --public-key {pub}"),
    ("training", "evaluate", "evaluate --bundle {bundle} --data {tmp} --public-key {pub} --split x"),
    ("training", "redecide", "redecide --bundle {bundle} --key {key} --version 'demo 3'"),
    ("training", "redecide", "redecide --bundle {bundle} --key {key} --version v3 --cost-miss lots"),
    ("training", "explain-eval", "explain-eval --bundle {bundle} --data {tmp} --public-key {pub}"),
    ("training", "explain-eval", "explain-eval --bundle {bundle} --data {tmp} --public-key {pub} --limit none"),
    ("training", "compare", "compare --bundle {bundle} --bundle {bundle} --images {tmp}/no-images --public-key {pub}"),
    ("training", "dataset", "dataset --from-feedback {tmp}/no-capture --out {tmp}/ds"),
    ("training", "weights", "weights convert {file} {tmp}/w.safetensors --architecture resnet18"),
    ("training", "weights", "weights convert {tmp}/no-such.pth {tmp}/w.safetensors --architecture resnet18"),
    ("training", "weights", "weights convert {file} {tmp}/w.safetensors --architecture vgg16"),
    ("app", "", "--port 8000"),  # configured by APP_* variables only
]

# The service's bad values come from its environment.
SERVE_ENV = {"APP_STORE": "{store}", "APP_PUBLIC_KEY": "{pub}", "APP_PORT": "eighty"}


def _subcommands(module: str) -> set[str]:
    from model_store import cli as store_cli
    from training import cli as training_cli

    if module == "app":
        return {""}  # no subcommands
    parser = {"model_store": store_cli, "training": training_cli}[module].build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


def test_every_subcommand_has_a_bad_value_case() -> None:
    for module in CONSOLE_COMMANDS.values():
        assert _subcommands(module) == {cmd for m, cmd, _ in BAD_VALUES if m == module}, module


@pytest.mark.parametrize(
    ("module", "command", "args"), BAD_VALUES, ids=[f"{m}-{c}-{i}" for i, (m, c, _) in enumerate(BAD_VALUES)]
)
def test_a_bad_value_is_one_line_and_exit_1_or_2(tmp_path: Path, keys, bundles, module, command, args) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    FilesystemStore(tmp_path / "store").init()
    where = {
        "tmp": str(tmp_path),
        "file": str(tmp_path / "a-file"),
        "store": str(tmp_path / "store"),
        "key": str(keys[0]),
        "pub": str(keys[1]),
        "bundle": str(bundles["v1"]),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "MODEL_STORE"))}
    if module == "app":
        env.update({k: v.format(**where) for k, v in SERVE_ENV.items()})
    result = subprocess.run(
        [sys.executable, "-m", module, *(a.format(**where) for a in shlex.split(args))],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode in (1, 2), result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_a_bad_setting_stops_the_service_in_one_line_naming_the_variable(tmp_path: Path, keys) -> None:
    FilesystemStore(tmp_path / "store").init()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
    env.update({"APP_STORE": str(tmp_path / "store"), "APP_PUBLIC_KEY": str(keys[1]), "APP_PORT": "eighty"})
    result = subprocess.run(
        [sys.executable, "-m", "app"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "APP_PORT" in lines[0], result.stderr


@pytest.mark.parametrize("command", sorted(CONSOLE_COMMANDS))
def test_console_commands_are_installed_and_answer_help(command: str) -> None:
    # Installed next to this interpreter by `pip install -e .` ([project.scripts]).
    path = Path(sys.executable).with_name(command)
    assert path.is_file(), f"{command} is not installed: re-run `make install`"
    result = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {command}"), result.stdout  # it names itself as typed
