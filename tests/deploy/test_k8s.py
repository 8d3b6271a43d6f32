"""deploy/k8s: valid against the Kubernetes API schemas (kubernetes-validate ships them, so
this runs offline), strictly (unknown fields are errors), and wired together: probes on
/readyz and /healthz, selectors that select, non-root read-only pods, settings that exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from app.edge import stations
from app.edge.stations import parse_tokens
from app.main import create_app
from app.settings import Settings
from tests.utils.deploy import K8S_DIR, K8S_VERSIONS, ROOT, k8s_documents, k8s_errors, k8s_manifest_files, k8s_objects

PENDING_SETTINGS = {"APP_WORKERS"}  # being added to the service elsewhere (see the packaging brief)


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return k8s_objects()


def _pod(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", k8s_manifest_files(), ids=lambda p: str(p.relative_to(K8S_DIR)))
def test_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    assert k8s_errors(path, version) == []


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("readinessProbe:", "readynessProbe:", "readynessProbe"),  # a typo the API server would drop silently
        ("containerPort: 8000", 'containerPort: "8000"', "containerPort"),
        ("failureThreshold: 60", "failureThreshold: sixty", "failureThreshold"),
        ("  replicas: 3", "  replicas: [3]", "replicas"),
    ],
)
def test_a_broken_copy_of_the_deployment_is_refused(tmp_path: Path, old: str, new: str, complaint: str) -> None:
    text = (K8S_DIR / "deployment.yaml").read_text()
    assert old in text
    broken = tmp_path / "deployment.yaml"
    broken.write_text(text.replace(old, new, 1))
    for version in K8S_VERSIONS:
        errors = k8s_errors(broken, version)
        assert errors and any(complaint in e for e in errors), errors


def test_a_manifest_of_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "apps/v1", "kind": "Deploymnet", "metadata": {"name": "x"}}))
    assert k8s_errors(bad, K8S_VERSIONS[0])


def test_kustomization_lists_the_service_manifests_but_no_secrets_and_no_job() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    service_files = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml", "secrets.example.yaml"}
    assert set(kustomization["resources"]) == service_files
    for name in kustomization["resources"]:
        kinds = {d["kind"] for d in yaml.safe_load_all((K8S_DIR / name).read_text()) if d}
        assert not kinds & {"Secret", "Job"}, name  # re-applying must not reset secrets or rerun training


def test_probes_use_readyz_for_readiness_and_healthz_for_liveness(objects) -> None:
    [api] = _pod(objects["Deployment", "damage-detect"])["containers"]
    port_names = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert api[probe]["httpGet"]["port"] in port_names
    assert port_names["http"] == 8000  # APP_PORT in the image


def test_pods_run_as_the_image_user_non_root_with_a_read_only_root(objects) -> None:
    for key in [("Deployment", "damage-detect"), ("Job", "damage-detect-train")]:
        pod = _pod(objects[key])
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # USER 10001:10001 in the Dockerfile
        assert pod["automountServiceAccountToken"] is False
        [container] = pod["containers"]
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert {"requests", "limits"} <= set(container["resources"])
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]  # the one writable place besides volumes


def test_the_replicas_read_settings_from_the_configmap_and_secrets(objects) -> None:
    pod = _pod(objects["Deployment", "damage-detect"])
    [api] = pod["containers"]
    config = objects["ConfigMap", "damage-detect-config"]["data"]
    assert {"configMapRef": {"name": "damage-detect-config"}} in api["envFrom"]
    assert config["APP_STORE"].startswith("s3://")
    assert int(config["APP_WORKERS"]) == int(api["resources"]["limits"]["cpu"])
    env = _env(api)
    assert env["APP_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "damage-detect-admin-token"
    key_dir = {m["name"]: m["mountPath"] for m in api["volumeMounts"]}["public-key"]
    secret_volume = {v["name"]: v for v in pod["volumes"]}["public-key"]["secret"]["secretName"]
    assert env["APP_PUBLIC_KEY"]["value"] == f"{key_dir}/public.pem"
    assert "public.pem" in objects["Secret", secret_volume]["stringData"]
    assert not any(v.get("secret", {}).get("secretName") == "damage-detect-signing-key" for v in pod["volumes"])


def test_every_app_variable_is_a_setting_of_the_service(objects) -> None:
    known = {f"APP_{name.upper()}" for name in Settings.model_fields} | PENDING_SETTINGS
    names = set(objects["ConfigMap", "damage-detect-config"]["data"])
    [api] = _pod(objects["Deployment", "damage-detect"])["containers"]
    names |= set(_env(api))
    assert {n for n in names if n.startswith("APP_")} - known == set()


def test_the_placeholder_token_is_refused_by_the_service(objects, tmp_path: Path) -> None:
    """Applying secrets.example.yaml unedited must stop the service, not run it with a published token."""
    placeholder = objects["Secret", "damage-detect-admin-token"]["stringData"]["APP_ADMIN_TOKEN"]
    (tmp_path / "public.pem").write_text("x")
    with pytest.raises(ValidationError, match="APP_ADMIN_TOKEN must be at least 16 printable characters"):
        Settings(store=str(tmp_path), public_key=tmp_path / "public.pem", admin_token=placeholder)


def test_service_pdb_hpa_and_networkpolicy_select_the_deployment(objects) -> None:
    deployment = objects["Deployment", "damage-detect"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = objects["Service", "damage-detect"]
    assert service["spec"]["selector"].items() <= labels.items()
    [api] = _pod(deployment)["containers"]
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in api["ports"]}
    assert objects["PodDisruptionBudget", "damage-detect"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = objects["HorizontalPodAutoscaler", "damage-detect"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "damage-detect"}
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    policy = objects["NetworkPolicy", "damage-detect"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert {"Ingress", "Egress"} == set(policy["policyTypes"])
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == [8000]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for obj in objects.values():
        assert obj["metadata"].get("namespace", "damage-detect") == "damage-detect"


def test_the_training_job_runs_torchrun_and_publishes_to_the_replicas_store(objects) -> None:
    pod = _pod(objects["Job", "damage-detect-train"])
    [train] = pod["containers"]
    assert train["command"] == ["/usr/local/bin/entrypoint", "/opt/app/train-publish.sh"]
    env = _env(train)
    assert int(env["NPROC"]["value"]) > 1  # train-publish.sh runs torchrun for NPROC > 1
    assert int(env["NPROC"]["value"]) == int(train["resources"]["limits"]["cpu"])
    script = (ROOT / "scripts" / "train-publish.sh").read_text()
    assert 'torchrun --standalone --nproc_per_node "$NPROC" --local-addr 127.0.0.1 -m training' in script
    assert env["STORE"]["valueFrom"]["configMapKeyRef"] == {"name": "damage-detect-config", "key": "APP_STORE"}
    assert (ROOT / env["CONFIG"]["value"]).is_file()
    mounts = {m["mountPath"]: m["name"] for m in train["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    signing = volumes[mounts[str(Path(env["SIGNING_KEY"]["value"]).parent)]]
    assert signing["secret"]["secretName"] == "damage-detect-signing-key"
    assert volumes[mounts["/work"]]["persistentVolumeClaim"]["claimName"] == "damage-detect-training"
    assert ("PersistentVolumeClaim", "damage-detect-training") in objects
    assert pod["restartPolicy"] == "Never"


# ---------------------------------------------------------------- stations: Ingress, TLS, tokens

STATION_ROUTES = {"/v1/predict", "/v1/feedback"}  # and the Open Inference Protocol, /v2...


def _routed(path: str, rules: list[tuple[str, str]]) -> bool:
    """Whether an Ingress with these (path, pathType) rules sends `path` on (Prefix matches whole segments)."""
    return any(path == rule or (kind == "Prefix" and path.startswith(rule.rstrip("/") + "/")) for rule, kind in rules)


def test_the_ingress_serves_the_station_routes_over_tls_and_nothing_else(objects, tmp_path: Path) -> None:
    ingress = objects["Ingress", "damage-detect"]["spec"]
    [tls] = ingress["tls"]
    assert objects["Secret", tls["secretName"]]["type"] == "kubernetes.io/tls"  # its shape in secrets.example.yaml
    service = objects["Service", "damage-detect"]
    rules = []
    for rule in ingress["rules"]:
        assert rule["host"] in tls["hosts"]  # no host is served without its certificate
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
            rules.append((path["path"], path["pathType"]))
    (tmp_path / "public.pem").write_text("x")
    routes = set(create_app(Settings(store=str(tmp_path), public_key=tmp_path / "public.pem")).openapi()["paths"])
    routed = {r for r in routes if _routed(r, rules)}
    assert routed == STATION_ROUTES | {r for r in routes if r == "/v2" or r.startswith("/v2/")}
    assert {path for path, _ in rules} <= routes | {"/v2"}  # no rule names a route the service lacks
    # ingress-nginx's default body limit (1 MiB) would refuse most photos: at least the service's own.
    annotations = objects["Ingress", "damage-detect"]["metadata"]["annotations"]
    size = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert size.endswith("m") and int(size[:-1]) * 2**20 >= Settings.model_fields["max_request_bytes"].default


def test_the_networkpolicy_admits_the_ingress_controller_the_ingress_names(objects) -> None:
    assert objects["Ingress", "damage-detect"]["spec"]["ingressClassName"] == "nginx"
    [rule] = objects["NetworkPolicy", "damage-detect"]["spec"]["ingress"]
    clients = {"damage-detect/client": "true"}
    controllers = [p for p in rule["from"] if p.get("podSelector", {}).get("matchLabels") != clients]
    assert controllers == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"}
            },
        }
    ]
    # Wrong tokens are counted per station address, which the controller forwards.
    assert objects["ConfigMap", "damage-detect-config"]["data"]["FORWARDED_ALLOW_IPS"] == "*"


def _servers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(what, pod spec, container) of everything that runs the service: the Deployment and KServe's runtime."""
    deployment = _pod(k8s_objects()["Deployment", "damage-detect"])
    [runtime] = k8s_documents(ROOT / "deploy" / "kserve" / "servingruntime.yaml")
    return [
        ("Deployment", deployment, deployment["containers"][0]),
        ("ServingRuntime", runtime["spec"], runtime["spec"]["containers"][0]),
    ]


@pytest.mark.parametrize(("what", "pod", "container"), _servers(), ids=lambda v: v if isinstance(v, str) else "")
def test_station_tokens_come_from_a_secret_mounted_whole_so_its_updates_reach_the_service(
    objects, what: str, pod: dict[str, Any], container: dict[str, Any]
) -> None:
    path = Path(_env(container)["APP_STATION_TOKENS_FILE"]["value"])
    [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) in (path, path.parent)]
    # The folder, never the file with subPath: that pins the file the pod started with, so
    # a revoked token would keep working.
    assert "subPath" not in mount and "subPathExpr" not in mount, what
    assert mount["mountPath"] == str(path.parent)
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    secret = objects["Secret", volume["secret"]["secretName"]]
    placeholder = secret["stringData"][path.name]
    assert parse_tokens(placeholder) == {}  # applied unedited, no station gets in (fail closed)


@pytest.mark.parametrize(("what", "pod", "container"), _servers(), ids=lambda v: v if isinstance(v, str) else "")
def test_probes_speak_what_the_pod_serves(what: str, pod: dict[str, Any], container: dict[str, Any]) -> None:
    """TLS ends at the Ingress, so pods serve HTTP; a pod given APP_TLS_* would need HTTPS probes."""
    https = (
        "APP_TLS_CERT_FILE" in _env(container)
        or "APP_TLS_CERT_FILE" in k8s_objects()["ConfigMap", "damage-detect-config"]["data"]
    )
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"].get("scheme", "HTTP") == ("HTTPS" if https else "HTTP")


def _kubelet_update(folder: Path, files: dict[str, str], n: int) -> None:
    """Write a Secret volume's files as the kubelet does (its AtomicWriter): a new timestamped
    folder, `..data` switched to it by one rename, the visible names links through `..data`."""
    target = folder / f"..2026_01_01_00_00_0{n}.000000001"
    target.mkdir()
    for name, text in files.items():
        (target / name).write_text(text)
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(Path("..data") / name)
    (folder / "..data_tmp").symlink_to(target.name)
    (folder / "..data_tmp").rename(folder / "..data")


def test_a_tokens_secret_updated_by_the_kubelet_is_reloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stations, "RELOAD_S", 0.0)  # look at the file on every request
    folder = tmp_path / "stations"
    folder.mkdir()
    line = {s: f"{s} {stations.token_digest(s + '-token')}\n" for s in ("dock-1", "dock-2")}
    _kubelet_update(folder, {"stations.txt": line["dock-1"] + line["dock-2"]}, 1)
    tokens = stations.StationTokens.load(folder / "stations.txt")
    assert tokens.station_for("dock-1-token") == "dock-1"
    _kubelet_update(folder, {"stations.txt": line["dock-2"]}, 2)  # dock-1 revoked
    assert tokens.station_for("dock-1-token") is None
    assert tokens.station_for("dock-2-token") == "dock-2"
