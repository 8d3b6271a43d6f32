"""Alerts and dashboard: deploy/prometheus (rules, their unit tests, compose's scrape
configuration), deploy/grafana (the dashboard and its provisioning) and deploy/k8s/monitoring
(the same rules for the Prometheus Operator), each checked by its own tool (promtool), and
every metric they name scraped from a real service's /metrics, so they cannot drift from it."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from model_store import activation
from model_store import monitoring as mon
from model_store.store import FilesystemStore
from tests.utils.deploy import (
    COMPOSE_REQUIRED,
    CRD_SCHEMAS,
    CRDS,
    K8S_DIR,
    K8S_VERSIONS,
    ROOT,
    k8s_documents,
    k8s_errors,
    k8s_objects,
    load_compose,
)
from tests.utils.factories import make_monitored_bundle, parcel_photo
from tests.utils.haproxy import localise
from tests.utils.promtool import promtool
from tests.utils.server import ADMIN_TOKEN, LiveServer

PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "damage-detect.json"
MONITORING = K8S_DIR / "monitoring"
ALERTS = {
    "DamageDetectDriftAlarm",
    "DamageDetectCostAlarm",
    "DamageDetectParityFailed",
    "DamageDetectBundleRefused",
    "DamageDetectNotServing",
    "DamageDetectStoreFollowFailing",
    "DamageDetectLoadShedding",
    "DamageDetectDeadlinesExceeded",
    "DamageDetectWorkerRestarts",
}
# What Grafana puts in for its variables, so that promtool can parse a panel's query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$station": ".*"}


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel's targets."""
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


# ---------------------------------------------------------------- metric names in PromQL

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: its identifiers less label values,
    matchers, ranges, grouping clauses, functions and keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and strings
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # matchers, ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = re.findall(r"(?<![\w.$])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()", expr)
    return {n for n in names if n not in _KEYWORDS}


def test_metric_names_reads_selectors_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{route=~"/v1/x|y"}[$__rate_interval]))) '
        "/ on (instance) group_left (version) max without (job) (b) > bool 1e3 and c offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}


def exposed(metrics_text: str) -> set[str]:
    """Every series name a scrape of this text can hold, from each family's type: a counter
    is `_total` (and `_created`), a histogram `_bucket`, `_sum`, `_count`, even before a
    labelled family has its first sample."""
    names = set()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    for family in text_string_to_metric_families(metrics_text):
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {s.name for s in family.samples}
    return names


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory, keys) -> dict[str, Any]:
    """A real service's /metrics after a station sent enough photos for its drift verdict
    and its quality estimate (MIN_IMAGES), and the routes it serves."""
    root = tmp_path_factory.mktemp("scrape")
    reference = [parcel_photo(seed) for seed in range(40)]
    bundle = make_monitored_bundle(root / "m1", keys[0], "m1", reference, decision={"expected_cost": 0.01})
    store = FilesystemStore(root / "store", keys[1])
    store.import_bundle(bundle.path, actor="t")
    activation.activate(store, "m1", actor="t")
    with LiveServer(store.root, keys[1], admin_token=ADMIN_TOKEN) as srv:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            for i in range(mon.MIN_IMAGES):
                headers = {"Content-Type": "image/jpeg", "X-Station-ID": "dock-1"}
                assert c.post("/v1/predict", content=parcel_photo(500 + i), headers=headers).status_code == 200
            text = c.get("/metrics").text
        routes = set(srv.app.openapi()["paths"])  # as the `route` label names them
    return {"text": text, "names": exposed(text), "routes": routes}


@pytest.mark.slow
def test_every_metric_the_rules_and_the_dashboard_name_is_exposed_by_the_service(scrape) -> None:
    named = {name for rule in _rules() for name in metric_names(rule["expr"])}
    queries = [q for _, q in _panel_queries(_dashboard())]
    named_by_dashboard = {name for q in queries for name in metric_names(q)}
    for variable in _dashboard()["templating"]["list"]:  # label_values(metric, label): Grafana's, not PromQL
        named_by_dashboard |= set(re.findall(r"label_values\((\w+),", variable.get("definition", "")))
    assert named - scrape["names"] == set(), "rules.yml names metrics the service does not expose"
    assert named_by_dashboard - scrape["names"] == set(), "the dashboard names metrics the service does not expose"
    # The live series the station alarms read are there for a station past its first verdict.
    text = scrape["text"]
    assert 'drift_psi{feature="brightness",station="dock-1"}' in text
    assert 'estimated_cost_alarm{station="dock-1"}' in text
    assert 'estimated_cost_per_parcel{bound="high",station="dock-1"}' in text
    assert "parity_passed 1.0" in text and "store_follow_healthy 1.0" in text


@pytest.mark.slow
def test_the_scoring_routes_of_the_alerts_and_the_dashboard_are_the_services(scrape) -> None:
    """The `route=~` of the shedding and deadline shares matches exactly the routes that
    score images: a renamed route would otherwise drop out of the denominator silently."""
    selectors = {m for rule in _rules() for m in re.findall(r'route=~"([^"]+)"', rule["expr"])}
    selectors |= {m for _, q in _panel_queries(_dashboard()) for m in re.findall(r'route=~"([^"]+)"', q)}
    scoring = {"/v1/predict", "/v1/explain", "/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"}
    assert len(selectors) == 1
    [selector] = selectors
    assert {r for r in scrape["routes"] if re.fullmatch(selector, r)} == scoring
    assert 'route="/v1/predict"' in scrape["text"]  # the label is the route's path, as matched


# ---------------------------------------------------------------- the rules


def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


def test_the_rules_unit_tests_pass() -> None:
    """deploy/prometheus/rules.test.yml: each alert fires on synthetic trouble, at the
    time and with the labels and annotations stated, and not on the healthy series."""
    done = promtool("test", "rules", PROMETHEUS / "rules.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("(drift_psi) > 0.25", "(drift_psi) > 0.5"),  # a drift alarm that waits for more drift
        ("expr: store_follow_healthy == 0\n        for: 5m", "expr: store_follow_healthy == 0\n        for: 30m"),
        ("increase(worker_restarts_total[15m]) > 0", "rate(worker_restarts_total[15m]) > 1"),
    ],
)
def test_the_unit_tests_catch_a_weakened_rule(tmp_path: Path, old: str, new: str) -> None:
    text = RULES.read_text()
    assert old in text
    (tmp_path / "rules.yml").write_text(text.replace(old, new, 1))
    (tmp_path / "rules.test.yml").write_text((PROMETHEUS / "rules.test.yml").read_text())
    done = promtool("test", "rules", tmp_path / "rules.test.yml")
    assert done.returncode != 0 and "FAILED" in done.stdout + done.stderr


def test_every_alert_is_tested_has_a_severity_a_wait_and_says_what_to_do() -> None:
    rules = _rules()
    assert {r["alert"] for r in rules} == ALERTS
    tested = yaml.safe_load((PROMETHEUS / "rules.test.yml").read_text())["tests"]
    firing = {a["alertname"] for t in tested for a in t["alert_rule_test"] if a["exp_alerts"]}
    silent = {a["alertname"] for t in tested for a in t["alert_rule_test"] if not a["exp_alerts"]}
    assert firing == ALERTS and silent == ALERTS  # each shown to fire, and to hold back
    for rule in rules:
        assert "for" in rule and rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), rule["alert"]
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert f"\n## {anchor.capitalize()}\n" in (ROOT / path).read_text()
    docs = (ROOT / "docs" / "monitoring.md").read_text()
    assert all(f"`{name}`" in docs for name in ALERTS)  # the runbook has a line for each


def test_the_drift_alarm_is_the_services_psi_alarm() -> None:
    [drift] = [r for r in _rules() if r["alert"] == "DamageDetectDriftAlarm"]
    threshold = float(drift["expr"].rpartition(">")[2])
    assert threshold == mon.PSI_ALARM


def test_compose_prometheus_loads_the_rules_promtool_checks(tmp_path: Path) -> None:
    """promtool checks prometheus.yml with its rule_files resolved as compose mounts them."""
    prometheus = load_compose(ROOT / "docker-compose.yml", COMPOSE_REQUIRED)["services"]["prometheus"]
    mounts = dict(v.split(":")[1::-1] for v in prometheus["volumes"] if v.startswith("./"))
    config = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    assert ROOT / mounts[config] == PROMETHEUS / "prometheus.yml"
    [rule_file] = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["rule_files"]
    assert ROOT / mounts[rule_file] == RULES
    local = tmp_path / "prometheus.yml"
    local.write_text(localise((PROMETHEUS / "prometheus.yml").read_text(), {rule_file: str(RULES)}))
    done = promtool("check", "config", local)
    assert done.returncode == 0, done.stdout + done.stderr
    assert promtool("check", "config", PROMETHEUS / "prometheus.yml").returncode != 0  # unresolved: refused


def test_compose_prometheus_scrapes_every_replica_on_the_service_port() -> None:
    services = load_compose(ROOT / "docker-compose.yml", COMPOSE_REQUIRED)["services"]
    [job] = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    [sd] = job["dns_sd_configs"]
    assert sd["names"] == ["api"] and sd["type"] == "A"  # one address per replica
    assert sd["port"] == Settings.model_fields["port"].default and job["metrics_path"] == "/metrics"
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name  # off unless asked for
    assert services["prometheus"]["image"].startswith("prom/prometheus:v2.")  # checked by promtool 2.x


# ---------------------------------------------------------------- the dashboard


def test_promtool_parses_every_query_of_the_dashboard(tmp_path: Path) -> None:
    """Each panel's query, its Grafana variables filled in, becomes a recording rule, so
    `promtool check rules` parses every one; a broken query shows that it would be caught."""
    queries = _panel_queries(_dashboard())
    assert len(queries) >= 20

    def check(exprs: list[str]) -> Any:
        rules = []
        for i, expr in enumerate(exprs):
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
            rules.append({"record": f"dashboard:query_{i}", "expr": expr})
        path = tmp_path / "dashboard-queries.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        return promtool("check", "rules", path)

    done = check([q for _, q in queries])
    assert done.returncode == 0, done.stdout + done.stderr
    assert check(["sum by (le (rate(x[5m]))"]).returncode != 0


def test_the_dashboard_reads_the_provisioned_prometheus() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"]
    [source] = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    chooser = variables["datasource"]
    assert chooser["type"] == "datasource" and chooser["query"] == source["type"] == "prometheus"
    assert chooser["current"]["value"] == source["uid"]  # the default is the provisioned one
    assert source["url"] == "http://prometheus:9090"  # compose's service name and port
    uses = [p["datasource"] for p in dashboard["panels"] if "datasource" in p]
    uses += [t["datasource"] for p in dashboard["panels"] for t in p.get("targets", [])]
    uses += [v["datasource"] for v in variables.values() if "datasource" in v]
    assert uses and all(u == {"type": "prometheus", "uid": "${datasource}"} for u in uses)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_dashboard_shows_what_the_alerts_watch() -> None:
    shown = {name for _, q in _panel_queries(_dashboard()) for name in metric_names(q)}
    watched = {name for rule in _rules() for name in metric_names(rule["expr"])}
    assert watched <= shown
    assert {"predicted_images_total", "http_request_duration_seconds_bucket", "queue_depth_images"} <= shown
    assert {"estimated_cost_per_parcel", "retake_images_total"} <= shown


def test_compose_grafana_mounts_the_provisioning_and_the_dashboard_where_the_provider_looks() -> None:
    grafana = load_compose(ROOT / "docker-compose.yml", COMPOSE_REQUIRED)["services"]["grafana"]
    mounts = dict(v.split(":")[1::-1] for v in grafana["volumes"] if v.startswith("./"))
    assert ROOT / mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    [provider] = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "damage-detect.yml").read_text())[
        "providers"
    ]
    assert ROOT / mounts[provider["options"]["path"]] == DASHBOARD.parent
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert ROOT / mounts[str(home.parent)] / home.name == DASHBOARD


# ---------------------------------------------------------------- Kubernetes (Prometheus Operator)


def test_the_prometheus_rule_holds_the_groups_of_rules_yml() -> None:
    [rule] = k8s_documents(MONITORING / "prometheusrule.yaml")
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert rule["spec"]["groups"] == groups, (
        "deploy/k8s/monitoring/prometheusrule.yaml differs from deploy/prometheus/rules.yml; its spec should be:\n"
        + yaml.safe_dump({"spec": {"groups": groups}}, sort_keys=False, width=120)
    )


def test_the_vendored_operator_schemas_are_the_ones_recorded() -> None:
    assert "v0.93.0" in (CRD_SCHEMAS / "README.md").read_text()
    for name, digest in CRDS.values():
        assert hashlib.sha256((CRD_SCHEMAS / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize(
    ("name", "old", "new", "complaint"),
    [
        ("prometheusrule.yaml", "    - alert: DamageDetectDriftAlarm", "    - alrt: DamageDetectDriftAlarm", "alrt"),
        ("prometheusrule.yaml", "for: 15m", "for: 15 minutes", "15 minutes"),
        ("servicemonitor.yaml", "  endpoints:", "  endpoint:", "endpoint"),
    ],
)
def test_a_broken_copy_of_a_monitoring_resource_is_refused(
    tmp_path: Path, name: str, old: str, new: str, complaint: str
) -> None:
    text = (MONITORING / name).read_text()
    assert old in text
    broken = tmp_path / name
    broken.write_text(text.replace(old, new, 1))
    errors = k8s_errors(broken, K8S_VERSIONS[0])
    assert errors and any(complaint in e for e in errors), errors


def test_the_monitoring_kustomization_is_apart_and_lists_its_manifests() -> None:
    """Apart from deploy/k8s: a cluster without the operator's CRDs would refuse the service's apply."""
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in MONITORING.glob("*.yaml")} - {"kustomization.yaml"}
    main = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["resources"]
    assert not any(r.startswith("monitoring") for r in main)


def test_prometheus_is_let_in_to_scrape_the_pods_the_service_monitor_selects() -> None:
    objects = k8s_objects()
    deployment, service = objects["Deployment", "damage-detect"], objects["Service", "damage-detect"]
    monitor = objects["ServiceMonitor", "damage-detect"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"
    policy = objects["NetworkPolicy", "damage-detect-prometheus"]["spec"]
    pods = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pods.items()
    [api] = deployment["spec"]["template"]["spec"]["containers"]
    assert [p["port"] for p in policy["ingress"][0]["ports"]] == [p["containerPort"] for p in api["ports"]]
