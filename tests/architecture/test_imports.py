"""The module map stays a map: layers only import downwards, and no module imports
itself back, not even through an import deferred inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("model_store", "training", "app", "benchmarks", "scripts", "tests")
# What each package may import from the others (docs/design.md: the contract below both).
# Nothing but the tests imports the tests: a tool built from test helpers lives in tests/.
ALLOWED = {
    "model_store": set(),
    "training": {"model_store"},
    "app": {"model_store"},
    "benchmarks": {"model_store", "app", "training"},
    "scripts": {"model_store", "app", "training"},
    "tests": {"model_store", "app", "training", "benchmarks", "scripts"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Project modules `path` imports anywhere (top level or inside functions)."""
    is_package = path.name == "__init__.py"
    base = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                anchor = base.split(".")[: len(base.split(".")) - (node.level - 1)]
                mod = ".".join([*anchor, mod] if mod else anchor)
            # `from pkg import sub` imports the submodule when there is one
            candidates = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for c in candidates:
            while c and c not in modules:  # `import a.b.c` needs a.b.c; fall back to the package
                c = c.rpartition(".")[0]
            if c and c != name:
                targets.add(c)
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_even_through_deferred_imports() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_only_import_downwards(package: str) -> None:
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in _graph().items()
        if name.split(".")[0] == package
        for target in targets
        if target.split(".")[0] not in {package} | ALLOWED[package]
    )
    assert wrong == []


# Inside the service: the serving pipeline knows nothing of HTTP or of hosting versions;
# operations (hosting, drift, capture, uploads) know nothing of HTTP; the edge uses both.
APP_LAYERS = {
    "app.settings": set(),  # read before anything heavy is imported: a bad setting is refused at once
    "app.serving": {"app.serving", "app.settings"},
    "app.ops": {"app.serving", "app.ops", "app.settings"},
}


@pytest.mark.parametrize("layer", sorted(APP_LAYERS))
def test_app_layers_only_import_downwards(layer: str) -> None:
    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in _graph().items()
        if top(name) == layer
        for target in targets
        if target.startswith("app.") and top(target) not in APP_LAYERS[layer] | {layer}
    )
    assert wrong == []
