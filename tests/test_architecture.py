"""The package's layers (docs/architecture.md): no import cycles, and each layer imports only the layers
below it. Read from the source (every import statement, also inside functions; ``TYPE_CHECKING`` imports
excluded), so a cycle fails here even where Python would tolerate it at run time."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: The parts below the run directory's owner (every layer above it may import them).
_BELOW_RUNDIR = {"errors", "contract", "data", "methods", "engine", "config", "safe_yaml", "eval_result"}

#: What each part of the package may import (besides itself). A part is a subpackage or a top module.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "contract": set(),
    "data": {"errors"},
    "methods": {"errors", "contract", "data"},
    "engine": {"errors", "contract", "data"},
    "safe_yaml": {"errors"},
    "eval_result": {"errors"},
    "config": {"errors", "methods", "data", "contract", "safe_yaml"},
    "rundir": {"errors", "config", "safe_yaml", "eval_result"},
    "evaluation": {*_BELOW_RUNDIR, "rundir"},
    "training": {*_BELOW_RUNDIR, "rundir", "evaluation"},
    "cli_options": {*_BELOW_RUNDIR, "rundir", "evaluation"},
    "cli": {*_BELOW_RUNDIR, "rundir", "evaluation", "training", "cli_options"},
    "__main__": {"cli"},
    "__init__": {"config", "methods", "training"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "tether").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The tether modules ``name`` imports (resolved to the longest known module name)."""
    found: set[str] = set()

    def resolve(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    resolve(alias.name)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".")[: -child.level] if path.name != "__init__.py" else name.split(".")
                    module = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    module = child.module or ""
                for alias in child.names:
                    resolve(f"{module}.{alias.name}")
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m.startswith("tether")}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH = {name: _imports(name, path, set(_modules())) for name, path in _modules().items()}


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH.get(m, ())):
            if state.get(n) == 1:
                cycle = [*stack[stack.index(n) :], n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                dfs(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            dfs(m)


def test_layers_import_only_what_they_may() -> None:
    wrong = [
        f"{m} imports {n}"
        for m, deps in sorted(GRAPH.items())
        for n in sorted(deps)
        if _part(n) != _part(m) and _part(n) not in ALLOWED[_part(m)]
    ]
    assert not wrong, "; ".join(wrong)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_every_module_imports(module: str) -> None:
    if module == "tether.__main__":
        pytest.skip("runs the CLI on import")
    importlib.import_module(module)


def test_the_graph_is_read() -> None:
    """The parser sees real edges (guards the tests above against reading nothing)."""
    assert "tether.training.run" in GRAPH["tether.training.stages"]
    assert "tether.contract" in GRAPH["tether.engine.logprobs"]
    assert "tether.errors" in GRAPH["tether.data.read"]
