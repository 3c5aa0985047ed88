"""The architecture's guard rails, read from the source with `ast` (nothing is imported).

Which imports count: for cycles, every import that runs (at module level and inside
functions); an import under `if TYPE_CHECKING:` never runs, so it cannot close an import
cycle and is left out. For the rules on who may import whom, every import counts, the
TYPE_CHECKING ones included: a type from the other side is still a dependency on it.
A package's own `__init__` run by importing one of its modules is not counted as an edge:
counting it would make every function-level import of a package's own submodule (as
`create_app` does with `api.views`) look like a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "worker", "cli", "shared", "tabserve_client")
SUBSYSTEMS = ("models", "online", "jobs", "monitoring", "openapi")

# Imports that close package-level cycles today. Every other cycle fails the test, and so does
# an entry here whose import is gone: delete the entry when its import is fixed.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a project module when the name is one)
    line: int
    runtime: bool  # False under `if TYPE_CHECKING:`


def project_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, runtime: bool = True) -> Iterator[tuple[ast.AST, bool]]:
    """Every node below `node`, each with whether it runs (not under TYPE_CHECKING)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for stmt in child.body:
                yield stmt, False
                yield from _walk(stmt, False)
            for stmt in child.orelse:
                yield stmt, runtime
                yield from _walk(stmt, runtime)
            continue
        yield child, runtime
        yield from _walk(child, runtime)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolved against the importing module's package
        package = module.split(".")
        package = package if is_package else package[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    # `from a import b` imports the module a.b when there is one, else a name from a
    named = [f"{base}.{alias.name}" for alias in node.names]
    submodules = [name for name in named if name in modules]
    return submodules + ([base] if len(submodules) < len(named) else [])


def read_imports(root: Path, packages: Iterable[str]) -> tuple[dict[str, Path], list[Import]]:
    modules = project_modules(root, packages)
    found = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, runtime in _walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.extend(Import(module, target, node.lineno, runtime)
                             for target in _targets(node, module, is_package, modules))
    return modules, found


def module_graph(modules: dict[str, Path], imports: Iterable[Import]) -> dict[str, set[str]]:
    """Runtime imports between the project's own modules."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if imp.runtime and imp.target in modules and imp.target != imp.source:
            graph[imp.source].add(imp.target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def layer_of(module: str) -> str:
    """The package-level node: an adapter, a shared/ subsystem, services, or the base modules."""
    parts = module.split(".")
    if parts[0] != "shared":
        return parts[0]
    if len(parts) > 1 and parts[1] in SUBSYSTEMS:
        return f"shared.{parts[1]}"
    return "shared.services" if module == "shared.services" else "shared"


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for source, targets in graph.items():
        edges = packages.setdefault(layer_of(source), set())
        edges.update(layer_of(t) for t in targets if layer_of(t) != layer_of(source))
    return packages


def edges_between(graph: dict[str, set[str]], a: str, b: str) -> list[str]:
    return sorted(f"{s} -> {t}" for s, ts in graph.items() for t in ts
                  if layer_of(s) == a and layer_of(t) == b)


@pytest.fixture(scope="module")
def project() -> tuple[dict[str, Path], list[Import]]:
    return read_imports(ROOT, PACKAGES)


def test_the_reader_sees_every_package(project):
    modules, imports = project
    assert {m.split(".")[0] for m in modules} == set(PACKAGES)
    assert "shared.services" in modules and "api.views.predict" in modules
    # a function-level import is read too
    assert any(i.source == "api" and i.target == "api.views.predict" for i in imports)


def test_no_import_cycle_between_modules(project):
    modules, imports = project
    cycle = find_cycle(module_graph(modules, imports))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _broken(imports: list[Import], source: str, targets: tuple[str, ...]) -> list[str]:
    return [f"{i.source}:{i.line} imports {i.target}" for i in imports
            if i.source.split(".")[0] == source and i.target.split(".")[0] in targets]


@pytest.mark.parametrize("source,forbidden", [
    ("api", ("worker", "cli", "celery", "kombu", "tabserve_client")),  # tasks go by name
    ("worker", ("api", "cli", "flask", "werkzeug", "tabserve_client")),
    ("shared", ("api", "worker", "cli", "flask", "werkzeug", "tabserve_client")),
    # the client is a client of the HTTP API only, with its own small dependencies
    ("tabserve_client", ("api", "worker", "cli", "shared", "flask", "werkzeug", "celery",
                         "kombu", "redis", "orjson", "pydantic", "click")),
])
def test_the_nevers(project, source, forbidden):
    _, imports = project
    assert _broken(imports, source, forbidden) == []


def test_no_cycle_between_the_layers_of_shared(project):
    modules, imports = project
    graph = module_graph(modules, imports)
    present = {(s, t) for s, ts in graph.items() for t in ts}
    assert KNOWN_CYCLE_EDGES - present == set(), "fixed: delete from KNOWN_CYCLE_EDGES"
    for source, target in KNOWN_CYCLE_EDGES:
        graph[source].discard(target)
    packages = package_graph(graph)
    cycle = find_cycle(packages)
    if cycle:
        hops = [f"{a} -> {b}: {', '.join(edges_between(graph, a, b))}"
                for a, b in zip(cycle, cycle[1:], strict=False)]
        pytest.fail("package cycle " + " -> ".join(cycle) + "\n" + "\n".join(hops))


def test_base_modules_of_shared_import_no_subsystem(project):
    modules, imports = project
    graph = module_graph(modules, imports)
    assert edges_between(graph, "shared", "shared.services") == []
    for subsystem in SUBSYSTEMS:
        assert edges_between(graph, "shared", f"shared.{subsystem}") == []


def test_the_checks_catch_a_cycle_a_type_import_does_not_make(tmp_path):
    pkg = tmp_path / "shared"
    (pkg / "jobs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "jobs" / "__init__.py").write_text("")
    (pkg / "base.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from shared.jobs import run\n")
    (pkg / "jobs" / "run.py").write_text("def f():\n    from .. import base\n")
    modules, imports = read_imports(tmp_path, ["shared"])
    graph = module_graph(modules, imports)
    assert graph["shared.jobs.run"] == {"shared.base"} and find_cycle(graph) is None
    (pkg / "base.py").write_text("def g():\n    import shared.jobs.run\n")
    modules, imports = read_imports(tmp_path, ["shared"])
    cycle = find_cycle(module_graph(modules, imports))
    assert cycle is not None and set(cycle) == {"shared.base", "shared.jobs.run"}
    assert find_cycle(package_graph(module_graph(modules, imports))) is not None
