"""deploy/kserve: the ServingRuntime and InferenceService valid against KServe's own CRD
schemas (vendored with their release, deploy/kserve/schemas/README.md), strictly (a field
the CRD does not know is an error, as a typo would be silently pruned by the API server),
and wired to the service: the v2 protocol's probes, the store, the keys and the token."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from app.main import create_app
from app.settings import Settings
from tests.utils.deploy import ROOT, k8s_objects, strict_crd_schema
from training.config import ExportConfig

KSERVE = ROOT / "deploy" / "kserve"
SCHEMAS = KSERVE / "schemas"
# The digests deploy/kserve/schemas/README.md records (KServe v0.20.0).
SCHEMA = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): (
        "servingruntime.v1alpha1.json",
        "2bd26be835e3d77cf72733bed288ac8b437bfbcd27ae64e27a6f3004728e7e94",
    ),
    ("serving.kserve.io/v1beta1", "InferenceService"): (
        "inferenceservice.v1beta1.json",
        "bed581e78b97661d2043ed0c8681625397b56883b6aa8e2342a4a42eb2ba2a5b",
    ),
}


def _validator(api_version: str, kind: str) -> Draft202012Validator:
    name, _ = SCHEMA[api_version, kind]
    return Draft202012Validator(strict_crd_schema(json.loads((SCHEMAS / name).read_text())))


def errors(path: Path) -> list[str]:
    problems = []
    for doc in yaml.safe_load_all(path.read_text()):
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key not in SCHEMA:
            problems.append(f"{path.name}: no KServe schema for {key}")
            continue
        for e in _validator(*key).iter_errors(doc):
            problems.append(f"{path.name}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
    return problems


def _load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((KSERVE / name).read_text())
    return doc


@pytest.fixture(scope="module")
def runtime() -> dict[str, Any]:
    return _load("servingruntime.yaml")


@pytest.fixture(scope="module")
def isvc() -> dict[str, Any]:
    return _load("inferenceservice.yaml")


def test_the_vendored_schemas_are_the_ones_recorded() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    assert "v0.20.0" in readme
    for name, digest in SCHEMA.values():
        assert hashlib.sha256((SCHEMAS / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("name", ["servingruntime.yaml", "inferenceservice.yaml"])
def test_the_manifests_match_kserves_crd_schemas(name: str) -> None:
    assert errors(KSERVE / name) == []


@pytest.mark.parametrize(
    ("name", "old", "new", "complaint"),
    [
        ("servingruntime.yaml", "readinessProbe:", "readynessProbe:", "readynessProbe"),
        ("servingruntime.yaml", "containerPort: 8000", 'containerPort: "8000"', "containerPort"),
        ("servingruntime.yaml", "protocolVersions:", "protocolVersion:", "protocolVersion"),
        ("inferenceservice.yaml", "minReplicas: 2", "minReplicas: two", "minReplicas"),
        ("inferenceservice.yaml", "modelFormat:", "modelFormats:", "modelFormats"),
    ],
)
def test_a_broken_copy_is_refused(tmp_path: Path, name: str, old: str, new: str, complaint: str) -> None:
    text = (KSERVE / name).read_text()
    assert old in text
    broken = tmp_path / name
    broken.write_text(text.replace(old, new, 1))
    problems = errors(broken)
    assert problems and any(complaint in p for p in problems), problems


def test_the_inference_service_runs_this_runtime_with_the_v2_protocol(runtime, isvc) -> None:
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] == "v2"
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert isvc["metadata"]["namespace"] == runtime["metadata"]["namespace"]
    # Named as the model the service serves (training's default manifest name), as /v2 paths name it.
    assert isvc["metadata"]["name"] == ExportConfig.model_fields["name"].default
    # The bundle comes from the signed store, never from KServe's unverified storage initializer.
    assert "storageUri" not in model and runtime["spec"]["storageHelper"]["disabled"] is True


def test_probes_are_the_v2_health_routes_on_the_service_port(runtime, tmp_path: Path) -> None:
    [container] = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"  # the name KServe looks for
    routes = create_app(_settings(tmp_path)).openapi()["paths"]
    port = Settings.model_fields["port"].default
    assert [p["containerPort"] for p in container["ports"]] == [port]
    probes = {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["path"] == "/v2/health/ready"
    assert probes["livenessProbe"]["path"] == "/v2/health/live"
    for probe in probes.values():
        assert probe["path"] in routes and probe["port"] == port


def test_the_runtime_gets_the_store_keys_and_token_as_the_deployment_does(runtime) -> None:
    objects = k8s_objects()
    [container] = runtime["spec"]["containers"]
    [api] = objects["Deployment", "damage-detect"]["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == api["envFrom"]  # APP_STORE and the S3 credentials
    assert container["env"] == api["env"]  # the public key's path, the token from its secret
    for ref in container["envFrom"]:
        kind = "ConfigMap" if "configMapRef" in ref else "Secret"
        assert (kind, (ref.get("configMapRef") or ref["secretRef"])["name"]) in objects, ref
    volumes = {v["name"]: v for v in runtime["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert container["env"][0]["value"] == f"{mounts['public-key']}/public.pem"
    assert ("Secret", volumes["public-key"]["secret"]["secretName"]) in objects
    assert "emptyDir" in volumes[next(n for n, p in mounts.items() if p == "/tmp")]
    assert not any(v.get("secret", {}).get("secretName") == "damage-detect-signing-key" for v in volumes.values())
    ctx = container["securityContext"]
    assert ctx["runAsNonRoot"] and ctx["readOnlyRootFilesystem"] and ctx["capabilities"]["drop"] == ["ALL"]
    assert int(objects["ConfigMap", "damage-detect-config"]["data"]["APP_WORKERS"]) == int(
        container["resources"]["limits"]["cpu"]
    )
    assert copy.deepcopy(container["resources"]) == api["resources"]


def _settings(tmp_path: Path) -> Settings:
    (tmp_path / "public.pem").write_text("x")
    return Settings(store=str(tmp_path), public_key=tmp_path / "public.pem")
