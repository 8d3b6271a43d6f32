"""docker-compose.yml: valid against the Compose Specification schema (vendored, offline),
and wired as the README says: N replicas on one S3 store behind a readiness-checking proxy."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings
from tests.utils.certs import make_pki
from tests.utils.deploy import (
    COMPOSE_REQUIRED,
    COMPOSE_SCHEMA,
    ROOT,
    compose_errors,
    interpolate,
    load_compose,
    merge_compose,
    parse_dockerfile,
)
from tests.utils.haproxy import check, localise

COMPOSE = ROOT / "docker-compose.yml"
REQUIRED = COMPOSE_REQUIRED
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
# Settings the service gains in work under way elsewhere (see the packaging brief).
PENDING_SETTINGS = {"APP_WORKERS"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE, REQUIRED)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def test_the_vendored_schema_is_the_one_recorded() -> None:
    assert hashlib.sha256(COMPOSE_SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256


def test_compose_file_matches_the_compose_specification() -> None:
    assert compose_errors(COMPOSE, env=REQUIRED) == []


def test_compose_file_is_valid_with_the_example_env_file() -> None:
    example = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy" / "compose.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(example) >= set(REQUIRED)
    assert compose_errors(COMPOSE, env=example) == []


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("    healthcheck:\n      test:\n        - CMD", "    healtcheck:\n      test:\n        - CMD", "healtcheck"),
        ("      replicas: ${REPLICAS:-3}", "      replicas: [3]", "replicas"),
        ("condition: service_healthy", "condition: healthy", "depends_on"),
        ("      - minio-data:/data", "      minio-data: /data", "volumes"),
        ('":9001"]', '":9001"', "flow sequence"),  # an unclosed bracket: not YAML any more
    ],
)
def test_a_broken_copy_of_the_compose_file_is_refused(tmp_path: Path, old: str, new: str, complaint: str) -> None:
    text = COMPOSE.read_text()
    assert old in text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    errors = compose_errors(broken, env=REQUIRED)
    assert errors and any(complaint in e for e in errors), errors


def test_a_missing_required_variable_is_refused_like_compose_does() -> None:
    assert "set S3_SECRET_KEY" in compose_errors(COMPOSE, env={**REQUIRED, "S3_SECRET_KEY": ""})[0]
    assert interpolate("$${X} ${X:-d} ${Y}", {"Y": "y"}) == "${X} d y"


def test_several_replicas_share_the_s3_store_and_publish_no_port_themselves(services) -> None:
    api = services["api"]
    assert int(api["deploy"]["replicas"]) >= 2
    assert "ports" not in api and "container_name" not in api  # either would stop it from scaling
    env = api["environment"]
    assert env["APP_STORE"].startswith("s3://")
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000" and "minio" in services
    assert float(env["APP_FOLLOW_INTERVAL_S"]) > 0  # replicas follow activations
    assert api["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert api["read_only"] is True and "/tmp" in api["tmpfs"]


def test_the_replicas_get_the_public_key_and_token_as_secrets_and_never_the_signing_key(compose, services) -> None:
    api = services["api"]
    mounted = {f"/run/secrets/{name}" for name in api["secrets"]}
    assert api["environment"]["APP_PUBLIC_KEY"] in mounted
    assert api["environment"]["APP_ADMIN_TOKEN_FILE"] in mounted  # the entrypoint reads it
    assert "APP_ADMIN_TOKEN" not in api["environment"]
    assert "signing_key" not in api["secrets"]
    for service in services.values():
        for name in service.get("secrets", []):
            source = ROOT / compose["secrets"][name]["file"]
            assert source.parent == ROOT / "deploy" / "secrets"
    private = ["deploy/secrets/private.pem", "deploy/secrets/admin-token", ".env"]
    ignored = subprocess.run(["git", "check-ignore", *private], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == private  # never committed by accident


def test_every_app_variable_is_a_setting_of_the_service(services) -> None:
    known = {f"APP_{name.upper()}" for name in Settings.model_fields} | PENDING_SETTINGS | {"APP_ADMIN_TOKEN_FILE"}
    for name, service in services.items():
        unknown = {k for k in service.get("environment", {}) if k.startswith("APP_")} - known
        assert unknown == set(), f"{name}: {unknown}"


def test_the_proxy_sends_predictions_only_to_ready_replicas() -> None:
    cfg = (ROOT / "deploy" / "haproxy.cfg").read_text()
    backends = dict(re.findall(r"^backend (\w+)\n((?:[ \t]+.*\n|\n)*)", cfg, flags=re.MULTILINE))
    assert re.search(r"^\s*default_backend ready$", cfg, flags=re.MULTILINE)
    assert "uri /readyz" in backends["ready"] and "expect status 200" in backends["ready"]
    assert "uri /healthz" in backends["live"]  # management reaches a live replica before any is ready
    for body in backends.values():
        assert re.search(r"server-template \w+ \d+ api:8000$", body, flags=re.MULTILINE)


def test_the_proxy_mounts_its_config_and_is_the_only_published_http_port(services) -> None:
    proxy = services["proxy"]
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in proxy["volumes"]
    assert proxy["ports"] == ["127.0.0.1:8080:8080"]
    assert all("ports" not in s for n, s in services.items() if n not in {"proxy", "minio", "prometheus", "grafana"})
    for name in ("prometheus", "grafana"):  # the monitoring profile's: this machine only
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"])


def test_the_training_profile_publishes_into_the_replicas_store(services) -> None:
    train, api = services["train"], services["api"]
    assert train["profiles"] == ["training"] and "profiles" not in api
    assert train["build"]["target"] == "training" and api["build"]["target"] == "runtime"
    _, stages = parse_dockerfile((ROOT / "Dockerfile").read_text())
    assert {"training", "runtime"} <= {s.name for s in stages}
    assert train["environment"]["STORE"] == api["environment"]["APP_STORE"]
    assert train["environment"]["SIGNING_KEY"] == "/run/secrets/signing_key" and "signing_key" in train["secrets"]
    assert train["environment"]["PUBLIC_KEY"] == api["environment"]["APP_PUBLIC_KEY"]
    assert (ROOT / train["environment"]["CONFIG"]).is_file()


def test_every_dependency_names_a_service(services) -> None:
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), name


# ---------------------------------------------------------------- deploy/compose.tls.yml

TLS_OVERRIDE = ROOT / "deploy" / "compose.tls.yml"
HAPROXY_TLS = ROOT / "deploy" / "haproxy-tls.cfg"


@pytest.fixture(scope="module")
def with_tls() -> dict[str, dict[str, Any]]:
    merged = merge_compose(load_compose(COMPOSE, REQUIRED), load_compose(TLS_OVERRIDE, REQUIRED))
    result: dict[str, dict[str, Any]] = merged["services"]
    return result


def test_overrides_merge_as_compose_merges_them() -> None:
    base = {"s": {"volumes": ["./a:/x:ro", "./b:/y"], "ports": ["1:1"], "command": ["a"], "environment": {"A": "1"}}}
    override = {"s": {"volumes": ["./c:/y:ro"], "ports": ["2:2"], "command": ["b"], "environment": {"B": "2"}}}
    assert merge_compose(base, override) == {
        "s": {
            "volumes": ["./a:/x:ro", "./c:/y:ro"],  # by target
            "ports": ["1:1", "2:2"],  # appended
            "command": ["b"],  # replaced
            "environment": {"A": "1", "B": "2"},  # merged by key
        }
    }


def test_the_tls_override_matches_the_compose_specification_alone_and_laid_over_the_compose_file(
    tmp_path: Path,
) -> None:
    assert compose_errors(TLS_OVERRIDE, env=REQUIRED) == []
    assert compose_errors(COMPOSE, TLS_OVERRIDE, env=REQUIRED) == []
    text = TLS_OVERRIDE.read_text()
    old = "    volumes:\n      - ./deploy/haproxy-tls"
    assert old in text
    broken = tmp_path / "compose.tls.yml"
    broken.write_text(text.replace(old, old.replace("volumes:", "volume:")))
    errors = compose_errors(COMPOSE, broken, env=REQUIRED)
    assert errors and any("volume" in e for e in errors), errors


def _mounts(service: dict[str, Any]) -> dict[str, tuple[Path, str]]:
    """target -> (source in this checkout, options) of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *options = volume.split(":")
        if source.startswith("./"):
            out[target] = (ROOT / source, ":".join(options))
    return out


def test_with_the_tls_override_stations_need_tokens_from_a_mounted_folder(with_tls) -> None:
    api = with_tls["api"]
    tokens = Path(api["environment"]["APP_STATION_TOKENS_FILE"])
    mounts = _mounts(api)
    # The folder, never the file itself: a file bind mount keeps its first inode, so an
    # editor's save or `sed -i` (a new file renamed over it) would never reach the replicas.
    source, options = mounts[str(tokens.parent)]
    assert str(tokens) not in mounts and source == ROOT / "deploy" / "stations" and source.is_dir()
    assert options == "ro"
    assert f"--file deploy/stations/{tokens.name}" in TLS_OVERRIDE.read_text()  # the command shown makes that file
    kept = ["deploy/stations/stations.txt", "deploy/tls/site.pem", "deploy/tls/client-ca.pem"]
    ignored = subprocess.run(["git", "check-ignore", *kept], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == kept
    readmes = ["deploy/stations/README.md", "deploy/tls/README.md"]  # they keep the folders in a clone
    assert subprocess.run(["git", "check-ignore", *readmes], cwd=ROOT, capture_output=True).stdout == b""


def test_with_the_tls_override_the_proxy_serves_https_from_the_mounted_certificate(with_tls) -> None:
    proxy = with_tls["proxy"]
    mounts = _mounts(proxy)
    command = proxy["command"]
    assert command[0] == "haproxy"
    configs = [command[i + 1] for i, arg in enumerate(command) if arg == "-f"]
    assert [mounts[c][0] for c in configs] == [ROOT / "deploy" / "haproxy.cfg", HAPROXY_TLS]
    bind = re.search(r"^\s*bind :(\d+) ssl crt (\S+) .*$", HAPROXY_TLS.read_text(), flags=re.MULTILINE)
    assert bind
    port, crt = bind.groups()
    assert mounts[str(Path(crt).parent)] == (ROOT / "deploy" / "tls", "ro")
    assert proxy["ports"] == ["127.0.0.1:8080:8080", f"0.0.0.0:{port}:{port}"]  # plain stays on loopback


def test_every_proxy_entry_replaces_the_clients_forwarded_for_and_the_replicas_trust_it(services) -> None:
    """The replicas count wrong tokens per X-Forwarded-For address: only HAProxy may write it."""
    assert services["api"]["environment"]["FORWARDED_ALLOW_IPS"] == "*"
    assert "option forwardfor" in (ROOT / "deploy" / "haproxy.cfg").read_text()
    for cfg in (ROOT / "deploy" / "haproxy.cfg", HAPROXY_TLS):
        frontends = re.findall(r"^frontend \w+\n((?:[ \t]+.*\n|\n)*)", cfg.read_text(), flags=re.MULTILINE)
        assert frontends
        for body in frontends:
            assert re.search(r"^\s*http-request del-header X-Forwarded-For\b", body, flags=re.MULTILINE), cfg.name


def test_haproxy_accepts_the_configuration_with_and_without_tls(tmp_path: Path) -> None:
    assert check(ROOT / "deploy" / "haproxy.cfg").returncode == 0
    pki = make_pki(tmp_path)
    site = tmp_path / "site.pem"
    site.write_bytes(pki.server_cert.read_bytes() + pki.server_key.read_bytes())
    tls = tmp_path / "tls.cfg"
    tls.write_text(localise(HAPROXY_TLS.read_text(), {"/usr/local/etc/haproxy/tls/site.pem": str(site)}))
    done = check(ROOT / "deploy" / "haproxy.cfg", tls)
    assert done.returncode == 0, done.stdout + done.stderr
    tls.write_text(tls.read_text().replace(" ssl crt ", " ssl crtt ", 1))
    assert check(ROOT / "deploy" / "haproxy.cfg", tls).returncode != 0  # the check does refuse a bad file
