"""Dependencies point one way (STYLE.md): no import cycle between calmcap modules, and the CLI is a leaf.

The graph is read from the source with ``ast``: every ``import`` and ``from ... import`` counts,
at module level or inside a function, relative or absolute, including the body of
``if __name__ == "__main__":`` (a library module that runs the CLI as a script still depends on
it). Only imports under ``if TYPE_CHECKING:`` (never executed) are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "calmcap"
CLI = "calmcap.cli"

# Known cycles, each with what removes it (none today: calmcap.checkpoint builds a model through
# the constructor CALMModel.from_pretrained passes it, and does not import the model).
KNOWN_CYCLES: set[frozenset[str]] = set()


def _module_names() -> dict[str, tuple[Path, bool]]:
    """``calmcap.x.y`` -> (file, whether it is a package's ``__init__``)."""
    modules = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(name: str, path: Path, is_package: bool) -> set[str]:
    """Every module name ``name``'s source imports (``a.b`` and, for ``from a.b import c``, ``a.b.c``)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for statement in child.orelse:
                    visit_statement(statement)
                continue
            visit_statement(child)

    def visit_statement(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


def import_graph() -> dict[str, set[str]]:
    """calmcap module -> the calmcap modules it imports (a name imported from a package that is not
    a module of its own stands for the package)."""
    modules = _module_names()
    graph = {}
    for name, (path, is_package) in modules.items():
        edges = set()
        for imported in _imported_names(name, path, is_package):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported.startswith("calmcap") and imported != name:
                edges.add(imported)
        graph[name] = edges
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """The cycles of ``graph``: its strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_what_the_modules_import(graph):
    # Module level, inside functions, and relative imports are all edges; type-only ones are not.
    assert "calmcap.pipeline.loading" in graph["calmcap.pipeline.caption"]
    assert "calmcap.checkpoint" in graph["calmcap.pipeline.loading"]  # imported inside load_model
    assert "calmcap.models.calm" not in graph["calmcap.pipeline.caption"]  # under TYPE_CHECKING only
    assert "calmcap.data.converters.base" in graph["calmcap.data.converters"]
    assert "calmcap.cli.caption" in graph[CLI] and "calmcap.pipeline" in graph["calmcap.cli.caption"]


def test_cycle_finder_finds_a_cycle():
    cycles = strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cycles == [{"a", "b", "c"}]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_calmcap_modules(graph):
    cycles = [sorted(c) for c in strongly_connected(graph) if frozenset(c) not in KNOWN_CYCLES]
    assert not cycles, f"modules that import each other (directly or through others): {cycles}"


def test_nothing_but_the_cli_imports_the_cli(graph):
    offenders = {name: sorted(e for e in edges if e == CLI or e.startswith(CLI + "."))
                 for name, edges in graph.items() if not (name == CLI or name.startswith(CLI + "."))}
    offenders = {name: edges for name, edges in offenders.items() if edges}
    assert not offenders, f"library modules importing the CLI: {offenders}"
