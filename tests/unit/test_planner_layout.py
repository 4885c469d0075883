"""The planner's modules call downward, in the order tether.planner's docstring gives,
and stay small enough to read."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tether.planner

PLANNER = Path(tether.planner.__file__).parent
PACKAGE = "tether.planner"
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60
# Functions over MAX_FUNCTION_LINES today, each to be split when its module is next
# worked on: remove an entry once it fits. New ones are not welcome.
LONG_FUNCTIONS = {
    ("intake", "start"),
}


def documented_order() -> list[str]:
    """The module names listed, one per indented line, after "in this order"."""
    doc = tether.planner.__doc__ or ""
    _, found, after = doc.partition("in this order")
    assert found, "tether.planner's docstring gives no module order"
    return re.findall(r"^ {4}(\w+)$", after, flags=re.MULTILINE)


def modules() -> dict[str, ast.Module]:
    return {
        path.stem: ast.parse(path.read_text(), str(path))
        for path in sorted(PLANNER.glob("*.py"))
        if path.stem != "__init__"
    }


def package_exports() -> set[str]:
    """The planner modules that importing the package itself imports."""
    tree = ast.parse((PLANNER / "__init__.py").read_text())
    return {
        imported
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for imported in planner_modules_of(node)
    }


def planner_modules_of(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The planner modules one import statement imports (the package stands for itself)."""
    names = (
        [alias.name for alias in node.names]
        if isinstance(node, ast.Import)
        else [
            node.module + "." + alias.name if node.module == PACKAGE else node.module
            for alias in node.names
        ]
        if node.module is not None
        else []
    )
    found = set()
    for name in names:
        if name == PACKAGE + ".__init__" or name == PACKAGE:
            found.add("__init__")
        elif name.startswith(PACKAGE + "."):
            found.add(name.removeprefix(PACKAGE + ".").split(".")[0])
    return found


def imports_of(tree: ast.Module, exports: set[str], known: set[str]) -> set[str]:
    """Every planner module ``tree`` imports, function-level imports included; importing
    the package counts as importing what its __init__ imports."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for name in planner_modules_of(node):
                if name == "__init__":
                    found |= exports
                elif name in known:
                    found.add(name)
                else:
                    # `from tether.planner import plan`: a name the package exports.
                    found |= exports
    return found


def test_the_docstring_orders_every_planner_module_once() -> None:
    order = documented_order()
    assert len(order) == len(set(order)), order
    assert set(order) == set(modules()), (
        f"tether.planner's docstring lists {sorted(order)}; planner/ holds {sorted(modules())}"
    )


def test_each_planner_module_imports_only_modules_below_it() -> None:
    order = documented_order()
    trees = modules()
    exports = package_exports()
    upward = [
        f"{module} imports {imported}"
        for module, tree in trees.items()
        for imported in sorted(imports_of(tree, exports, set(trees)))
        if order.index(imported) <= order.index(module)
    ]
    assert not upward, f"planner modules that call upward or sideways: {upward}"


def test_planner_modules_are_small_enough_to_read() -> None:
    long = {
        path.name: lines
        for path in PLANNER.glob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"planner modules over {MAX_MODULE_LINES} lines: {long}"


def test_planner_functions_are_small_enough_to_read() -> None:
    long = {
        (module, node.name): node.end_lineno - node.lineno + 1
        for module, tree in modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    }
    assert set(long) <= LONG_FUNCTIONS, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
