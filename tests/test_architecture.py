"""The import structure of the package, checked from the source (no module is imported).

Every ``import`` counts, also one inside a function (a cycle "worked around" with a local import
is still a cycle); only ``if TYPE_CHECKING:`` blocks, which never run, are left out. The rules:

- no import cycle between cnnas's modules;
- ``cnnas.models`` imports only the standard library, torch and safetensors;
- the layers point one way, ``search -> objectives -> models``;
- inside ``cnnas.search`` no module imports a module of a higher floor (the table below).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Repository folder -> the package it installs as (pyproject's package-dir).
PACKAGES = {"cnnas": "cnnas", "models": "cnnas.models", "objectives": "cnnas.objectives"}
PACKAGES["search"] = "cnnas.search"

# The floors of cnnas.search, lowest first: a module may import its own floor or lower ones.
SEARCH_FLOORS = [
    ["errors", "_format", "_quiet", "_aliases"],
    ["_config"],
    ["_space", "_records", "_storage", "_tracking", "_mlflow_model", "_export", "_latency"],
    ["_pruning", "_sizing"],
    ["_objective"],
    ["_study"],
    ["_workers", "_lanes", "_registry", "_final", "_head_start"],
    ["report"],
    ["experiments"],
    ["cli"],
]
LAYERS = {"cnnas.models": 0, "cnnas.objectives": 1, "cnnas.search": 2}
THIRD_PARTY_FOR_MODELS = {"torch", "safetensors"}


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, leaving out the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imports(name: str, path: Path) -> set[str]:
    """The absolute names ``name`` imports (``from .x import y`` resolves to ``pkg.x`` or, when
    ``y`` is a module, ``pkg.x.y``)."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    known = modules()
    out: set[str] = set()
    for node in _nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - node.level + 1]
                target = ".".join(parent + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    out.add(f"{target}.{alias.name}")
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """Each cnnas module -> the cnnas modules it imports."""
    known = modules()
    return {
        name: {i for i in imports(name, path) if i in known and i != name}
        for name, path in known.items()
    }


def test_every_package_folder_is_installed() -> None:
    """pyproject's package list names every folder with an __init__.py (a wheel lacking one
    fails at its first import)."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    folders = {n for n, p in modules().items() if p.name == "__init__.py"}
    assert folders == listed


def test_no_import_cycles(graph) -> None:
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_models_imports_only_torch_and_the_standard_library() -> None:
    bad = {}
    for name, path in modules().items():
        if not name.startswith("cnnas.models"):
            continue
        for imported in imports(name, path):
            top = imported.split(".")[0]
            if imported.startswith("cnnas.models") or top in sys.stdlib_module_names:
                continue
            if top not in THIRD_PARTY_FOR_MODELS:
                bad.setdefault(name, set()).add(imported)
    assert not bad, bad


def _layer(name: str) -> int | None:
    return next((v for k, v in LAYERS.items() if name == k or name.startswith(k + ".")), None)


def _upward(graph: dict[str, set[str]], level) -> list[tuple[str, str]]:
    """The imports that go from a module to one of a higher ``level`` (None: not ranked)."""
    return [
        (a, b)
        for a, targets in graph.items()
        for b in targets
        if level(a) is not None and level(b) is not None and level(b) > level(a)
    ]


def test_layers_point_one_way(graph) -> None:
    assert not _upward(graph, _layer)


def _floor(name: str) -> int | None:
    parts = name.split(".")
    if len(parts) < 3 or parts[:2] != ["cnnas", "search"]:
        return None
    for level, members in enumerate(SEARCH_FLOORS):
        if parts[2] in members:
            return level
    raise AssertionError(f"{name} has no floor in SEARCH_FLOORS: add it where it belongs")


def test_no_search_module_imports_a_higher_floor(graph) -> None:
    assert not _upward(graph, _floor)


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path) -> None:
    """The walk above finds what it must: relative imports, function-level imports."""
    path = tmp_path / "_study.py"
    path.write_text(
        "from __future__ import annotations\nfrom typing import TYPE_CHECKING\n"
        "from .cli import main\n"
        "def f():\n    from ._records import front\n"
        "if TYPE_CHECKING:\n    from .report import Report\n"
    )
    found = imports("cnnas.search._study", path)
    assert {"cnnas.search.cli", "cnnas.search._records"} <= found
    assert not any(f.startswith("cnnas.search.report") for f in found)
    assert _floor("cnnas.search.cli") > _floor("cnnas.search._study")
