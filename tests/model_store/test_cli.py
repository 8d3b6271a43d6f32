"""`python -m model_store`, run as a user would: exit codes and one-line messages."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from model_store.store import FilesystemStore
from tests.utils.bundles import failing_parity_copy, proof_for

pytestmark = pytest.mark.slow  # real servers / subprocesses


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model_store", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def refused(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert lines[0].startswith("error: ")
    return lines[0]


def test_keygen(tmp_path: Path) -> None:
    result = cli("keygen", "--out", str(tmp_path / "k"))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "k" / "private.pem").st_mode) == 0o600
    assert "already exists" in refused(cli("keygen", "--out", str(tmp_path / "k")))


def test_verify_ok_and_refused(bundle_copy, keys, other_keys) -> None:
    path = bundle_copy()
    ok = cli("verify", str(path), "--public-key", str(keys[1]))
    assert ok.returncode == 0 and "OK: parcel-damage v1 verified" in ok.stdout
    assert "different key" in refused(cli("verify", str(path), "--public-key", str(other_keys[1])))
    (path / "model.sig").unlink()
    assert "no model.sig" in refused(cli("verify", str(path), "--public-key", str(keys[1])))


def test_verify_without_a_key_is_a_usage_error(bundles) -> None:
    assert "--public-key" in refused(cli("verify", str(bundles["v1"])), code=2)


def test_store_workflow(tmp_path: Path, bundles, keys) -> None:
    env = {"MODEL_STORE": str(tmp_path / "store"), "MODEL_STORE_PUBLIC_KEY": str(keys[1])}
    for v in ("v1", "v2"):
        r = cli("import", str(bundles[v]), env=env)
        assert r.returncode == 0 and f"{v}: imported" in r.stdout
    assert "already present" in cli("import", str(bundles["v1"]), env=env).stdout

    assert cli("activate", "v1", "--reason", "first", env=env).returncode == 0
    r = cli("activate", "v2", "--reason", "better", "--actor", "ops@site", env=env)
    assert r.returncode == 0 and "active: v2 (was v1); parity passed" in r.stdout

    listed = cli("list", env=env).stdout.splitlines()
    assert listed[0].startswith("  v1") and listed[1].startswith("* v2")
    as_json = json.loads(cli("--json", "list", env=env).stdout)
    assert [(i["version"], i["active"]) for i in as_json] == [("v1", False), ("v2", True)]
    assert json.loads(cli("show", "v2", env=env).stdout)["version"] == "v2"

    r = cli("rollback", "--reason", "alarm rate doubled", env=env)
    assert r.returncode == 0 and "active v1 (was v2)" in r.stdout
    assert "no earlier active version" in refused(cli("rollback", env=env))

    log = [json.loads(line) for line in cli("--json", "log", env=env).stdout.splitlines()]
    assert [(e["action"], e["to_version"]) for e in log] == [
        ("import", "v1"),
        ("import", "v2"),
        ("activate", "v1"),
        ("activate", "v2"),
        ("rollback", "v1"),
    ]
    assert log[3]["actor"] == "ops@site" and log[4]["reason"] == "alarm rate doubled"


def test_activate_refuses_a_bundle_that_fails_parity(tmp_path: Path, bundles, keys) -> None:
    path = failing_parity_copy(bundles["v2"], tmp_path / "v2", keys[0])
    env = {"MODEL_STORE": str(tmp_path / "store"), "MODEL_STORE_PUBLIC_KEY": str(keys[1])}
    assert cli("import", str(path), env=env).returncode == 0  # verifies: it is well signed
    assert "fails parity" in refused(cli("activate", "v2", env=env))
    assert "*" not in cli("list", env=env).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [(["activate", "v9"], "not in the store"), (["show", "nope"], "not in the store")],
)
def test_store_refusals(tmp_path: Path, keys, args: list[str], message: str) -> None:
    FilesystemStore(tmp_path / "store").init()  # a store, without that version
    env = {"MODEL_STORE": str(tmp_path / "store"), "MODEL_STORE_PUBLIC_KEY": str(keys[1])}
    assert message in refused(cli(*args, env=env))


NOT_A_STORE = "is not a model store (create one with `python -m model_store import BUNDLE` or `init`)"


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["list"], "missing"),
        (["log"], "missing"),
        (["show", "v1"], "missing"),
        (["activate", "v1"], "missing"),
        (["rollback"], "missing"),
        (["list"], "empty_dir"),
    ],
)
def test_commands_that_need_a_store_refuse_a_path_that_is_not_one(tmp_path: Path, keys, args, where) -> None:
    typo = tmp_path / "demo" / "stor"
    if where == "empty_dir":
        typo.mkdir(parents=True)
    line = refused(cli(*args, "--store", str(typo), "--public-key", str(keys[1])))
    assert line == f"error: {typo} {NOT_A_STORE}"
    assert not typo.exists() if where == "missing" else list(typo.iterdir()) == []  # nothing created


def test_init_creates_an_empty_store_and_verify_never_touches_one(tmp_path: Path, bundles, keys) -> None:
    env = {"MODEL_STORE": str(tmp_path / "store"), "MODEL_STORE_PUBLIC_KEY": str(keys[1])}
    r = cli("init", env=env)
    assert r.returncode == 0 and "created an empty model store" in r.stdout
    assert "already a model store" in cli("init", env=env).stdout
    assert cli("list", env=env).stdout == "no versions in the store\n"
    assert cli("log", env=env).stdout == ""
    # verify reads a bundle directory only: a store path that does not exist is no concern of it
    r = cli("verify", str(bundles["v1"]), env={**env, "MODEL_STORE": str(tmp_path / "nope")})
    assert r.returncode == 0 and not (tmp_path / "nope").exists()


def test_an_s3_store_from_the_command_line(s3_server: str, tmp_path: Path, bundles, keys) -> None:
    from tests.utils.stores import BUCKET

    location = f"s3://{BUCKET}/cli-{os.urandom(4).hex()}"
    env = {"MODEL_STORE": location, "MODEL_STORE_PUBLIC_KEY": str(keys[1]), "XDG_CACHE_HOME": str(tmp_path)}
    assert refused(cli("list", env=env)) == f"error: {location} {NOT_A_STORE}"
    r = cli("import", str(bundles["v1"]), env=env)
    assert r.returncode == 0 and "v1: imported" in r.stdout
    r = cli("activate", "v1", "--reason", "first", env=env)
    assert r.returncode == 0 and "active: v1 (was none); parity passed" in r.stdout
    assert cli("list", env=env).stdout.startswith("* v1 ")
    log = [json.loads(line) for line in cli("--json", "log", env=env).stdout.splitlines()]
    assert [(e["action"], e["to_version"], e["reason"]) for e in log] == [
        ("import", "v1", ""),
        ("activate", "v1", "first"),
    ]
    assert "not in the store" in refused(cli("show", "v9", env=env))


def test_the_audit_log_cannot_be_forged_or_colour_the_terminal(tmp_path: Path, bundles, keys) -> None:
    store = FilesystemStore(tmp_path / "store", keys[1])
    store.import_bundle(bundles["v1"], actor="ops")
    proof = proof_for(bundles["v1"], keys[1])
    store.activate("v1", actor="\x1b[31mmallory\u202e", reason="ok\n2026-01-01 forged line", proof=proof)
    entry = store.audit_log()[-1]
    assert entry.actor.isprintable() and entry.reason.isprintable(), entry  # sanitised where it entered
    assert "mallory" in entry.actor and "forged line" in entry.reason  # escaped, not lost
    # An entry written before the store sanitised anything is escaped when it is printed.
    log = store.root / "audit.jsonl"
    lines = log.read_text().splitlines()
    raw = {**json.loads(lines[-1]), "actor": "\x1b[31mold", "reason": "ok\r\n2026-01-01 old forged line\x07"}
    log.write_text("\n".join([*lines[:-1], json.dumps(raw)]) + "\n")
    out = cli("log", "--store", str(store.root))
    assert out.returncode == 0, out.stderr
    printed = out.stdout.splitlines()
    assert len(printed) == 2, out.stdout  # one line per entry: nothing forged a third
    assert all(line.isprintable() for line in printed), out.stdout  # no ESC, BEL, CR or bidi override
    assert "activate" in printed[1] and "old forged line" in printed[1]


def test_revoke_from_the_command_line(tmp_path: Path, bundles, keys, other_keys) -> None:
    store = FilesystemStore(tmp_path / "store", keys[1])
    for v in ("v1", "v2"):
        store.import_bundle(bundles[v], actor="ops")
        store.activate(v, actor="ops", proof=proof_for(bundles[v], keys[1]))
    # Rotation: the public key may be a directory of trusted keys, here the old and a new one.
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    for i, key in enumerate((keys[1], other_keys[1])):
        (trusted / f"{i}.pem").write_bytes(key.read_bytes())
    env = {"MODEL_STORE": str(store.root), "MODEL_STORE_PUBLIC_KEY": str(trusted)}
    assert "the following arguments are required: --reason" in refused(cli("revoke", "v1", env=env), code=2)
    assert "v2 is the active version" in refused(cli("revoke", "v2", "--reason", "bad", env=env))
    r = cli("revoke", "v1", "--reason", "misses dents", env=env)
    assert r.returncode == 0 and "revoked: v1" in r.stdout, r.stderr
    assert "v1 is revoked" in refused(cli("rollback", env=env))
    assert "v1 is revoked" in refused(cli("activate", "v1", env=env))
    assert "REVOKED" in next(line for line in cli("list", env=env).stdout.splitlines() if " v1 " in line)
    assert "revoke" in cli("log", env=env).stdout.splitlines()[-1]
    assert cli("revoke", "v1", "--undo", "--reason", "false alarm", env=env).returncode == 0
    assert store.revoked() == {} and store.active_version() == "v2"


def test_a_canary_from_the_command_line(tmp_path: Path, bundles, keys) -> None:
    env = {"MODEL_STORE": str(tmp_path / "store"), "MODEL_STORE_PUBLIC_KEY": str(keys[1])}
    store = FilesystemStore(tmp_path / "store", keys[1])
    for v in ("v1", "v2"):
        store.import_bundle(bundles[v], actor="t")
    store.activate("v1", actor="t", proof=proof_for(bundles["v1"], keys[1]))

    assert cli("canary", "show", env=env).stdout.strip() == "no canary"
    started = cli("canary", "start", "v2", "--stations", "dock-1,dock-2", "--reason", "try", env=env)
    assert started.returncode == 0, started.stderr
    assert "canary: v2 on stations dock-1, dock-2 (was none); parity passed" in started.stdout
    shown = json.loads(cli("canary", "show", "--json", env=env).stdout)
    assert (shown["version"], shown["stations"], shown["fraction"]) == ("v2", ["dock-1", "dock-2"], 0.0)
    assert "canary on stations dock-1, dock-2" in cli("list", env=env).stdout
    # Both, or neither, is a usage error; a canary of the active version is refused in one line.
    assert cli("canary", "start", "v2", "--stations", "a", "--fraction", "0.5", env=env).returncode == 2
    assert "v1 is the active version already" in refused(cli("canary", "start", "v1", "--fraction", "0.2", env=env))

    ended = cli("canary", "end", "--reason", "enough", env=env)
    assert ended.returncode == 0 and "v2's stations return to the active version" in ended.stdout
    assert "there is no canary" in refused(cli("canary", "end", env=env))

    assert cli("canary", "start", "v2", "--fraction", "0.25", env=env).returncode == 0
    assert "on 0.25 of stations since" in cli("canary", "show", env=env).stdout
    promoted = cli("canary", "promote", "--reason", "good", env=env)
    assert promoted.returncode == 0, promoted.stderr
    assert "promoted: active v2 (was v1)" in promoted.stdout
    assert store.active_version() == "v2" and store.canary() is None
    log = cli("log", env=env).stdout.splitlines()
    assert [line.split()[3] for line in log[-4:]] == ["canary", "canary", "canary", "promote"]
    store.set_canary("v1", stations=["a"], actor="t", proof=proof_for(bundles["v1"], keys[1]))
    store.end_canary(actor="policy", evidence={"images": 300, "agreement": 0.8})
    assert cli("log", env=env).stdout.splitlines()[-1].endswith('evidence {"agreement":0.8,"images":300}')
