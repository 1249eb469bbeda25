"""The package's shape: no import cycles, and no module importing a command-line module.

Every import counts, also those inside functions (a cycle hidden in a function still ties
the two modules together); only ``if TYPE_CHECKING:`` imports are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import inferwatch

PACKAGE_DIR = Path(inferwatch.__file__).parent
# The modules that turn flags into a configuration and start something: entry points only.
CLI_MODULES = frozenset(
    (
        "inferwatch.cli",
        "inferwatch.generate.cli",
        "inferwatch.gpu_cli",
        "inferwatch.server.cli",
        "inferwatch.sidecar.cli",
    )
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            yield from (n for orelse in node.orelse for n in _imports_in(orelse))
            continue
        yield from _imports_in(node)


def _imports_in(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _imports(node)


def imported_modules(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports (a submodule when one is named)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t if t in MODULES else base for t in targets]
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_the_graph_sees_the_imports_it_must() -> None:
    assert "inferwatch.schema" in GRAPH["inferwatch.metrics"]
    assert "inferwatch.sidecar.proxy" in GRAPH["inferwatch.sidecar.process"]
    # an import inside a function counts too
    assert "inferwatch.sidecar.workers" in GRAPH["inferwatch.sidecar.cli"]


def test_no_import_cycle_in_the_package() -> None:
    cycles = [group for group in strongly_connected(GRAPH) if len(group) > 1]
    assert cycles == [], "modules that import each other: " + "; ".join(
        " <-> ".join(group) for group in cycles
    )


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert sorted(g for g in strongly_connected(graph) if len(g) > 1) == [["a", "b", "c"]]


def test_nothing_imports_a_command_line_module() -> None:
    importers = {
        name: sorted(GRAPH[name] & CLI_MODULES)
        for name in GRAPH
        if GRAPH[name] & CLI_MODULES and name not in ("inferwatch.cli", "inferwatch.__main__")
    }
    assert importers == {}
