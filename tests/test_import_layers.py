"""The package layout stays one-way: no import cycle between engine's packages, kernels/ stands
alone, and benchmark code is reached only through engine/benchmark.py.

Read from the source text (every import, including the ones inside functions), so a lazy import
that closes a cycle is caught too.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT


def _imports(path: Path, package: str) -> set[str]:
    """Absolute module names imported by the file at `path` (relative imports resolved)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _unit(module: str) -> str | None:
    """engine.ner.tasks -> engine.ner; engine.io -> engine.io; non-engine modules -> None."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "engine" and len(parts) > 1 else None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_graph(root: Path) -> dict[str, set[str]]:
    """engine's top-level units (sub-packages and modules) and the units each one imports."""
    graph: dict[str, set[str]] = {}
    for path in sorted((root / "engine").rglob("*.py")):
        name = _module_name(path)
        unit = _unit(name)
        if unit is None:
            continue
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = {_unit(m) for m in _imports(path, package)} - {None, unit}
        graph.setdefault(unit, set()).update(t for t in targets if (root / Path(*t.split("."))).exists()
                                             or (root / Path(*t.split("."))).with_suffix(".py").exists())
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search with three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_a_cycle_and_accepts_a_layered_graph():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_engine_packages():
    graph = unit_graph(ROOT)
    assert "engine.ner" in graph and "engine.curriculum" in graph  # the walk saw the tree
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_kernels_import_nothing_from_engine():
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in _imports(p, "kernels") if m.split(".")[0] == "engine")
                 for p in sorted((ROOT / "kernels").rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_benchmark_entry_script_imports_the_benchmarks():
    users = set()
    for path in sorted((ROOT / "engine").rglob("*.py")):
        name = _module_name(path)
        if name.startswith("engine.benchmarks"):
            continue
        if any(m == "engine.benchmarks" or m.startswith("engine.benchmarks.") for m in _imports(path, name)):
            users.add(str(path.relative_to(ROOT)))
    assert users <= {"engine/benchmark.py"}
