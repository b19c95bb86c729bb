"""The package's import graph, counting imports inside functions, has no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import worldmodels

ROOT = Path(worldmodels.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """worldmodels modules `path` imports anywhere in it (module level or in a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c` imports a.b, or the module a.b.c
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "worldmodels":
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: _imports(path, set(files)) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
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

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_package_has_no_import_cycle():
    graph = import_graph()
    assert "worldmodels.models.controller" in graph["worldmodels.agent"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_agent_sits_below_the_stages():
    graph = import_graph()
    stages = {"worldmodels.evaluate", "worldmodels.video", "worldmodels.pipeline",
              "worldmodels.evolve.workers", "worldmodels.evolve.cmaes", "worldmodels.env.dream"}
    assert not graph["worldmodels.agent"] & stages
    for stage in ("worldmodels.evaluate", "worldmodels.video", "worldmodels.env.dream",
                  "worldmodels.evolve.workers"):
        assert "worldmodels.agent" in graph[stage]
