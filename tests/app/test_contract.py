"""The API contract: /openapi.json declares request bodies, the bearer scheme and every
status each route answers; /docs and /redoc work with no network beyond this service;
405s name the allowed methods; and schemathesis, against a real server with and without
the token and every check it has, finds no 5xx and no response that breaks the document."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from model_store import activation
from model_store.manifest import VERSION_PATTERN
from model_store.signing import generate_keypair
from model_store.store import FilesystemStore
from tests.utils.server import ADMIN_TOKEN, ServiceProcess, admin

pytestmark = pytest.mark.slow

ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}
MANAGEMENT = [
    ("get", "/v1/models"),
    ("post", "/v1/models"),
    ("get", "/v1/models/{version}"),
    ("post", "/v1/models/{version}/activate"),
    ("post", "/v1/models/rollback"),
    ("get", "/v1/shadow"),
    ("put", "/v1/shadow"),
    ("delete", "/v1/shadow"),
    ("get", "/v1/canary"),
    ("put", "/v1/canary"),
    ("delete", "/v1/canary"),
    ("post", "/v1/canary/promote"),
    ("get", "/v1/monitoring"),
    ("get", "/v1/audit"),
    ("post", "/v1/feedback"),
]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, keys, bundles) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("contract")
    store = FilesystemStore(root / "store", keys[1])
    for v in ("v1", "v2"):
        store.import_bundle(bundles[v], actor="fixture")
    activation.activate(store, "v1", actor="fixture")
    env = {
        "APP_STORE": str(store.root),
        "APP_PUBLIC_KEY": str(keys[1]),
        "APP_ADMIN_TOKEN": ADMIN_TOKEN,
        "APP_WORKERS": "1",
        # Receipts on: every predict answer then carries one, checked against the document too.
        "APP_RECEIPT_KEY": str(generate_keypair(root / "receipt-keys")[0]),
        "TMPDIR": str(root),
    }
    with ServiceProcess(env, root / "service.log") as svc:
        svc.wait_ready()
        yield svc


@pytest.fixture(scope="module")
def document(service: ServiceProcess) -> dict[str, Any]:
    r = httpx.get(f"{service.url}/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def test_predict_and_upload_declare_their_request_bodies(document: dict[str, Any]) -> None:
    explain = document["paths"]["/v1/explain"]["post"]["requestBody"]["content"]
    assert explain["multipart/form-data"]["schema"]["properties"]["files"]["maxItems"] == 1
    assert explain["image/jpeg"]["schema"] == {"type": "string", "format": "binary"}
    predict = document["paths"]["/v1/predict"]["post"]["requestBody"]
    assert predict["required"] is True
    content = predict["content"]
    for kind in ("image/jpeg", "image/png", "image/webp"):
        assert content[kind]["schema"] == {"type": "string", "format": "binary"}, kind
    files = content["multipart/form-data"]["schema"]["properties"]["files"]
    assert files["type"] == "array" and files["items"]["format"] == "binary"
    upload = document["paths"]["/v1/models"]["post"]["requestBody"]
    assert upload["content"]["application/x-tar"]["schema"]["format"] == "binary"
    feedback = document["paths"]["/v1/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"request_id", "labels"} <= set(feedback["required"])


def test_management_routes_declare_the_bearer_scheme(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    for method, path in MANAGEMENT:
        assert {"bearer": []} in document["paths"][path][method].get("security", []), (method, path)
    # /v1/parity needs the token only with ?version=: either no security or the bearer scheme.
    assert document["paths"]["/v1/parity"]["get"]["security"] == [{}, {"bearer": []}]
    for open_route in ("/v1/predict", "/v1/explain", "/healthz", "/readyz"):
        operation = next(iter(document["paths"][open_route].values()))
        assert "security" not in operation, open_route


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("post", "/v1/predict", {200, 408, 413, 415, 422, 503}),
        ("post", "/v1/explain", {200, 401, 408, 413, 415, 422, 429, 503}),  # 413: an image over the limit
        ("get", "/v1/parity", {200, 401, 403, 404, 409, 422, 429, 503}),
        ("get", "/v1/models", {200, 401, 403, 429, 503}),
        ("post", "/v1/models", {200, 201, 401, 403, 408, 409, 413, 415, 422, 429, 503}),
        ("get", "/v1/models/{version}", {200, 401, 403, 404, 422, 429, 503}),
        ("post", "/v1/models/{version}/activate", {200, 401, 403, 404, 408, 409, 413, 422, 429, 503}),
        ("post", "/v1/models/rollback", {200, 401, 403, 408, 409, 413, 422, 429, 503}),
        ("post", "/v1/feedback", {201, 401, 403, 404, 408, 409, 413, 422, 429, 503, 507}),
    ],
)
def test_every_status_a_route_answers_is_declared_with_the_error_schema(
    document: dict[str, Any], method: str, path: str, statuses: set[int]
) -> None:
    responses = document["paths"][path][method]["responses"]
    assert {int(s) for s in responses} == statuses
    for status, response in responses.items():
        if int(status) >= 400 and not (path == "/v1/parity" and status == "409"):
            assert response["content"]["application/json"]["schema"] == ERROR_BODY, status
    error = document["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"error", "message"}


def test_the_v2_routes_declare_the_protocols_error_shape(document: dict[str, Any]) -> None:
    infer = document["paths"]["/v2/models/{model}/infer"]["post"]
    assert {int(s) for s in infer["responses"]} == {200, 400, 404, 408, 413, 415, 422, 503}
    assert set(infer["responses"]["200"]["content"]) == {"application/json", "application/octet-stream"}
    assert "application/octet-stream" in infer["requestBody"]["content"]
    oip_error = {"$ref": "#/components/schemas/OIPError"}
    for status, response in infer["responses"].items():
        if int(status) >= 400:
            assert response["content"]["application/json"]["schema"] == oip_error, status
    assert document["components"]["schemas"]["OIPError"]["required"] == ["error"]


def test_405_names_the_allowed_methods_in_json(service: ServiceProcess) -> None:
    for method, path, allowed in (
        ("GET", "/v1/predict", "POST"),
        ("DELETE", "/healthz", "GET"),
        ("PUT", "/v1/models", "POST"),
    ):
        r = httpx.request(method, f"{service.url}{path}")
        assert r.status_code == 405, (method, path)
        assert allowed in r.headers["allow"], r.headers
        assert r.json()["error"] == "method_not_allowed"
    r = httpx.get(f"{service.url}/nowhere")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_version_parameters_declare_the_stores_name_pattern(document: dict[str, Any]) -> None:
    declared = []
    for path, method in (
        ("/v1/models/{version}", "get"),
        ("/v1/models/{version}/activate", "post"),
        ("/v1/parity", "get"),
    ):
        (param,) = [p for p in document["paths"][path][method]["parameters"] if p["name"] == "version"]
        schema = param["schema"]
        declared.append(schema.get("pattern") or next(s.get("pattern") for s in schema["anyOf"] if "pattern" in s))
    assert declared == [VERSION_PATTERN] * 3
    shadow = document["paths"]["/v1/shadow"]["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert shadow["properties"]["version"]["pattern"] == VERSION_PATTERN


def test_a_version_name_outside_the_pattern_is_refused_naming_it(service: ServiceProcess) -> None:
    for r in (
        httpx.get(f"{service.url}/v1/models/v%20x", headers=admin()),
        httpx.post(f"{service.url}/v1/models/.hidden/activate", headers=admin()),
        httpx.get(f"{service.url}/v1/parity", params={"version": "v" * 65}, headers=admin()),
    ):
        assert r.status_code == 422 and r.json()["error"] == "invalid_version_name", r.text


def test_rollback_is_a_path_of_its_own_not_a_version(service: ServiceProcess) -> None:
    for method in ("OPTIONS", "GET"):
        r = httpx.request(method, f"{service.url}/v1/models/rollback", headers=admin())
        assert r.status_code == 405 and r.headers["allow"] == "POST", (method, r.headers)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_load_everything_from_this_service(service: ServiceProcess, page: str) -> None:
    r = httpx.get(f"{service.url}{page}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.IGNORECASE), "the page names another host"
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) + re.findall(r"""url: ?['"]([^'"]+)['"]""", html)
    assert any(a.endswith(".js") for a in assets), assets
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), asset
        got = httpx.get(f"{service.url}{asset}")
        assert got.status_code == 200 and got.content, asset
    assert "/openapi.json" in html


# --- schemathesis -----------------------------------------------------------------------

# Every check schemathesis has (not named on the command line, where a list would override
# the per-operation settings). Where one is wrong for an operation, it is off for that
# operation only, and the configuration says why.
CONFIG = """
checks.enabled = true

# positive_data_acceptance: a schema-valid body must be accepted. These bodies are
# `format: binary`, so any bytes are schema-valid, but only a real image (predict) or a
# signed bundle archive (upload) is valid; JSON Schema cannot say which bytes those are,
# and refusing the rest with a 4xx is the contract.
[[operations]]
include-path = ["/v1/predict", "/v1/explain", "/v1/models"]
include-method = "POST"
checks.positive_data_acceptance.enabled = false

# The same for an Open Inference Protocol request: its JSON header and binary data are
# bytes that JSON Schema cannot describe either.
[[operations]]
include-path = ["/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"]
include-method = "POST"
checks.positive_data_acceptance.enabled = false
"""
MAX_EXAMPLES = 25  # per operation and phase: with ~15 operations, under a minute per run on 2 cores


@pytest.mark.parametrize("token", [True, False], ids=["with-token", "without-token"])
def test_schemathesis_finds_no_5xx_and_no_contract_violation(service: ServiceProcess, token: bool, tmp_path) -> None:
    cli = Path(sys.executable).with_name("schemathesis")
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    args = [
        str(cli),
        "--no-color",
        "--config-file",
        str(config),
        "run",
        f"{service.url}/openapi.json",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "1",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--continue-on-failure",  # every violation in one report, not only the first
        "--generation-database",
        "none",
    ]
    if token:
        args += ["--header", f"Authorization: Bearer {ADMIN_TOKEN}"]
    started = time.monotonic()
    result = subprocess.run(args, capture_output=True, text=True, timeout=240, cwd=tmp_path, check=False)
    elapsed = time.monotonic() - started
    summary = result.stdout[-3000:]
    print(f"\nschemathesis ({'with' if token else 'without'} token), {elapsed:.0f} s:\n{summary}")
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
