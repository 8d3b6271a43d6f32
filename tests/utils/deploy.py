"""Readers and offline validators for the deployment files (Dockerfile, compose, Kubernetes)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_SCHEMA = ROOT / "deploy" / "schemas" / "compose-spec.json"
# What `.env` must provide (deploy/compose.env.example); values here are placeholders.
COMPOSE_REQUIRED = {
    "MINIO_ROOT_USER": "u",
    "MINIO_ROOT_PASSWORD": "p" * 8,
    "S3_ACCESS_KEY": "a",
    "S3_SECRET_KEY": "s" * 8,
}
K8S_DIR = ROOT / "deploy" / "k8s"
# The oldest Kubernetes release the manifests must work on, and the newest schema we ship.
K8S_VERSIONS = ("1.30", "1.37")
# Custom resources of deploy/k8s/monitoring: the Prometheus Operator's CRD schemas, vendored
# with their release and digests (deploy/k8s/monitoring/schemas/README.md).
CRD_SCHEMAS = K8S_DIR / "monitoring" / "schemas"
CRDS = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): (
        "prometheusrule.v1.json",
        "4fe9483fd8e3177f8cd6aa891cb58f9e7b26b42b8b9fe20b9c7c01b95c4c2a06",
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        "servicemonitor.v1.json",
        "da826a76ad7db032c414cf71b700ced30d379cedc715c012170c2168aa1636fd",
    ),
}


# ---------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY...
    value: str  # the rest, continuation lines joined
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD, else None."""
        text = self.value
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + 3 :] if "CMD" in text else ""
        text = text.strip()
        if not text.startswith("["):
            return None
        parsed = json.loads(text)
        return [str(p) for p in parsed]


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ENV KEY=VALUE pairs set in this stage (not inherited ones)."""
        out: dict[str, str] = {}
        for i in self.all("ENV"):
            for token in re.findall(r'(\w+)=("[^"]*"|\S+)', i.value):
                out[token[0]] = token[1].strip('"')
        return out


def dockerfile_instructions(text: str) -> Iterator[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        parts = [line]
        while parts[-1].endswith("\\") and i < len(lines):
            parts[-1] = parts[-1][:-1]
            nxt = lines[i].strip()
            i += 1
            if nxt.startswith("#"):
                parts.append("\\")  # comment lines inside a continuation are skipped
                continue
            parts.append(nxt)
        joined = " ".join(p for p in parts if p != "\\")
        keyword, _, value = joined.partition(" ")
        yield Instruction(keyword.upper(), value.strip(), start + 1)


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[Stage]]:
    """(global instructions before the first FROM, stages in order)."""
    preamble: list[Instruction] = []
    stages: list[Stage] = []
    for ins in dockerfile_instructions(text):
        if ins.keyword == "FROM":
            m = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", ins.value, flags=re.IGNORECASE)
            assert m, f"line {ins.line}: cannot read FROM {ins.value}"
            stages.append(Stage(name=m.group(2).lower() if m.group(2) else None, base=m.group(1)))
        elif stages:
            stages[-1].instructions.append(ins)
        else:
            preamble.append(ins)
    return preamble, stages


def copy_sources(ins: Instruction) -> list[str]:
    """Build-context sources of a COPY/ADD (none for COPY --from=...)."""
    words = ins.value.split()
    if any(w.startswith("--from=") for w in words):
        return []
    args = [w for w in words if not w.startswith("--")]
    return args[:-1]


# ---------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    pattern = pattern.strip().strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignore_excludes(patterns_text: str, path: str) -> bool:
    """Whether Docker leaves `path` (relative, `/`-separated) out of the build context.

    As Docker reads it: the last pattern that matches the path or one of its parent
    directories decides, and `!pattern` re-includes.
    """
    rules = []
    for raw in patterns_text.splitlines():
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        negate = raw.startswith("!")
        rules.append((negate, _pattern_regex(raw[1:] if negate else raw)))
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


# ---------------------------------------------------------------- compose

_VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation: $$, $NAME, ${NAME}, ${NAME:-default}, ${NAME:?error}."""

    def replace(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4)
        value = env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op and op.endswith("?") and unset:
            raise KeyError(f"{name}: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return value or ""

    return _VARIABLE.sub(replace, value)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(n, env) for n in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def load_compose(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """The compose file as `docker compose` sees it: YAML (merge keys resolved), interpolated."""
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path.name} is not a YAML mapping")
    doc: dict[str, Any] = interpolate_tree(raw, env)
    return doc


# How `docker compose -f a.yml -f b.yml` merges b into a (the Compose Specification's
# "Merge and override"): mappings merge key by key; these sequences are appended to, those
# are merged by their target (or name); any other value, `command` included, is replaced.
_APPENDED = {"ports", "expose", "external_links", "dns", "dns_search", "tmpfs", "cap_add", "cap_drop", "extra_hosts"}
_BY_TARGET = {"volumes", "secrets", "configs"}


def _target(item: Any) -> Any:
    if isinstance(item, dict):
        return item.get("target") or item.get("source")
    parts = str(item).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def merge_compose(base: Any, override: Any, key: str | None = None) -> Any:
    """`override` laid over `base` as compose lays a later file over an earlier one."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            merged[k] = merge_compose(base[k], v, k) if k in base else v
        return merged
    if isinstance(base, list) and isinstance(override, list):
        if key in _APPENDED:
            return base + [v for v in override if v not in base]
        if key in _BY_TARGET:
            replaced = {_target(v) for v in override}
            return [v for v in base if _target(v) not in replaced] + override
    return override


def compose_errors(*paths: Path, env: Mapping[str, str]) -> list[str]:
    """Every way the files, merged in order as `docker compose -f ... -f ...` merges them,
    break the Compose Specification schema; empty when valid."""
    try:
        doc: dict[str, Any] = {}
        for path in paths:
            doc = merge_compose(doc, load_compose(path, env))
    except (yaml.YAMLError, ValueError, KeyError) as exc:
        return [f"{path.name}: {exc}"]
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc))


# ---------------------------------------------------------------- Kubernetes


def k8s_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_manifest_files() -> list[Path]:
    """Every Kubernetes manifest under deploy/k8s (kustomization files are kustomize's, not the API's)."""
    return sorted(p for p in K8S_DIR.rglob("*.yaml") if p.name != "kustomization.yaml")


def strict_crd_schema(node: Any) -> Any:
    """A CRD's schema with unknown fields refused wherever it lists its fields and does not
    keep unknown ones (`x-kubernetes-preserve-unknown-fields`): the API server would prune a
    typo silently."""
    if isinstance(node, list):
        return [strict_crd_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_crd_schema(v) for k, v in node.items()}
    keeps_unknown = out.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in out
    if "properties" in out and not keeps_unknown:
        out["additionalProperties"] = False
    return out


def crd_errors(doc: dict[str, Any], schema: Path) -> list[str]:
    """`doc` checked against a vendored CRD schema, strictly; empty when valid."""
    validator = jsonschema.Draft202012Validator(strict_crd_schema(json.loads(schema.read_text())))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def k8s_errors(path: Path, version: str) -> list[str]:
    """Every document of `path` checked against the Kubernetes `version` OpenAPI schema, strictly
    (unknown fields are errors), or against its vendored CRD schema (CRDS); empty when all are valid."""
    try:
        docs = k8s_documents(path)
    except yaml.YAMLError as exc:
        return [f"{path.name}: not YAML: {exc}"]
    errors = []
    for doc in docs:
        what = f"{path.name} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        crd = CRDS.get((str(doc.get("apiVersion")), str(doc.get("kind"))))
        if crd is not None:
            errors += [f"{what}: {e}" for e in crd_errors(doc, CRD_SCHEMAS / crd[0])]
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{what}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except (kubernetes_validate.SchemaNotFoundError, KeyError) as exc:
            errors.append(f"{what}: {getattr(exc, 'message', exc)}")
    return errors


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, for every manifest under deploy/k8s."""
    return {(d["kind"], d["metadata"]["name"]): d for p in k8s_manifest_files() for d in k8s_documents(p)}
