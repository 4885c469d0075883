"""The package's shape: evaluation above production, no import cycles, small modules.

The import graph is read from the source (ast), so a test sees every import
statement, also one in a function that no test happens to call.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "shared" / "tether"
HOT_PATH = ("planner", "executor", "escalation")
MAX_LINES = 450
MAX_ROOT_MODULES = 15

# Which imports an edge counts: "module" runs at import time, "function" when the
# function runs, "typing" only for the type checker (under `if TYPE_CHECKING:`).
MODULE, FUNCTION, TYPING = "module", "function", "typing"


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _known(name: str) -> str | None:
    """The tether module that ``name`` (a module, or a name in one) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, body: list[ast.stmt], kind: str) -> Iterator[tuple[str, str, int]]:
    """(imported module, kind, line) for every import of a tether module in ``body``."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in body:
        if isinstance(node, ast.If) and _type_checking(node):
            yield from _imports(module, node.body, TYPING)
            yield from _imports(module, node.orelse, kind)
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _imports(module, node.body, FUNCTION if kind == MODULE else kind)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name)
                if target is not None:
                    yield target, kind, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                target = (
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else _known(base)
                )
                if target is not None:
                    yield target, kind, node.lineno
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                nested = getattr(node, field, None)
                if isinstance(nested, list):
                    yield from _imports(module, nested, kind)


def _edges() -> dict[tuple[str, str], list[tuple[str, int]]]:
    edges: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for module, path in MODULES.items():
        for target, kind, line in _imports(module, ast.parse(path.read_text()).body, MODULE):
            if target != module:
                edges.setdefault((module, target), []).append((kind, line))
    return edges


EDGES = _edges()


def _cycles(kinds: set[str]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for (source, target), found in EDGES.items():
        if any(kind in kinds for kind, _ in found):
            graph.setdefault(source, set()).add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(MODULES):
        if node not in index:
            visit(node)
    return components


def _describe(components: list[list[str]], kinds: set[str]) -> str:
    lines = []
    for component in components:
        lines.append("cycle among " + ", ".join(component) + ":")
        for source in component:
            for target in component:
                found = [(k, n) for k, n in EDGES.get((source, target), []) if k in kinds]
                if found:
                    where = ", ".join(f"line {n} ({k})" for k, n in found)
                    lines.append(f"  {source} -> {target}: {where}")
    return "\n".join(lines)


def test_the_graph_reads_the_imports_it_checks() -> None:
    # The checks below pass vacuously on a graph that reads nothing.
    assert len(EDGES) > 200
    assert (MODULE, 17) in EDGES[("tether.runtime", "tether.observability.tracing")]
    # The runner stays out of workers that resolve eval: agents (tether.evaluation).
    assert FUNCTION in {k for k, _ in EDGES[("tether.evaluation", "tether.evaluation.runner")]}
    assert TYPING in {k for found in EDGES.values() for k, _ in found}


@pytest.mark.parametrize(
    "kinds",
    [{MODULE}, {MODULE, FUNCTION}, {MODULE, FUNCTION, TYPING}],
    ids=["module-level", "and function-level", "and TYPE_CHECKING"],
)
def test_no_import_cycle(kinds: set[str]) -> None:
    components = _cycles(kinds)
    assert not components, _describe(components, kinds)


def test_a_cycle_is_found_and_named() -> None:
    # The detector itself, on a cycle made for it: runtime importing the agents.
    EDGES[("tether.observability.tracing", "tether.runtime")] = [(MODULE, 1)]
    try:
        components = _cycles({MODULE})
        assert ["tether.observability.tracing", "tether.runtime"] in components
        assert "tether.observability.tracing -> tether.runtime: line 1" in _describe(
            components, {MODULE}
        )
    finally:
        del EDGES[("tether.observability.tracing", "tether.runtime")]


def test_production_services_import_no_evaluation() -> None:
    code = (
        "import sys\n"
        "import tether.planner.worker, tether.executor.worker, tether.escalation.worker\n"
        "import tether.client\n"
        "assert 'tether.planner.intake' in sys.modules, 'the planner was not imported'\n"
        "print(sorted(m for m in sys.modules if m.startswith('tether.evaluation')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"production imported evaluation: {done.stdout}"


def test_no_hot_path_module_imports_evaluation() -> None:
    # As `git grep -n "import.*evaluation" shared/tether/{planner,executor,escalation}`.
    pattern = re.compile(r"import.*evaluation")
    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for folder in HOT_PATH
        for path in sorted((PACKAGE / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    found += [
        f"{source} -> {target} (line {line})"
        for (source, target), imports in EDGES.items()
        if source.removeprefix("tether.").partition(".")[0] in HOT_PATH
        and target.startswith("tether.evaluation")
        for _, line in imports
    ]
    assert not found, "the production path imports evaluation:\n" + "\n".join(found)


def test_few_modules_at_the_package_root() -> None:
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, f"{len(root)} modules at the root: {root}"


def _lines() -> dict[str, int]:
    return {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_no_module_over_the_line_limit() -> None:
    over = [f"{name}: {count} lines" for name, count in _lines().items() if count > MAX_LINES]
    assert not over, f"split these modules (at most {MAX_LINES} lines each):\n" + "\n".join(over)
