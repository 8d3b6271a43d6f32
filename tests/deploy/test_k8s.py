"""deploy/k8s: valid against the Kubernetes API schemas (kubernetes-validate ships them, so
this runs offline), strictly (unknown fields are errors), and wired together: probes on
/readyz and /healthz, selectors that select, non-root read-only pods, settings that exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from app.settings import Settings
from tests.utils.deploy import K8S_DIR, K8S_VERSIONS, ROOT, k8s_errors, k8s_manifest_files, k8s_objects

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
