"""
No import circle among rosteradmin's modules, type-only imports included.

A module that imports another only under C{if TYPE_CHECKING:} still depends
on it: the two cannot be understood, tested or moved apart, and the day the
import is needed at run time the circle breaks the import.  mypy accepts
such circles and Python never runs those imports, so nothing else would
notice one.  Run: C{.venv/bin/python -m pytest tests/test_imports.py}.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]

#: A module's imports of the package's modules: module name, line number.
Imports = dict[str, int]


def moduleName(path: Path, base: Path) -> str:
    """
    The dotted name of a module file (C{a/b/__init__.py} is C{a.b}).
    """
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def importGraph(package: Path) -> dict[str, Imports]:
    """
    Every module of the package directory (subpackages included) and the
    package's modules it imports: every C{import} and C{from ... import}
    statement anywhere in the module (under C{if TYPE_CHECKING:}, inside a
    function), absolute or relative.  C{from p import name} names the
    module C{p.name} if there is one, else C{p}.
    """
    base = package.parent
    paths = {moduleName(p, base): p for p in sorted(package.rglob("*.py"))}
    graph: dict[str, Imports] = {}
    for name, path in paths.items():
        isPackage = path.name == "__init__.py"
        imports: Imports = {}

        def add(target: str, line: int) -> None:
            if target in paths and target != name:
                imports.setdefault(target, line)

        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parent = name.split(".")
                    drop = node.level - 1 if isPackage else node.level
                    anchor = ".".join(parent[:len(parent) - drop])
                    source = f"{anchor}.{node.module}" if node.module else anchor
                else:
                    source = node.module or ""
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    add(submodule if submodule in paths else source, node.lineno)
        graph[name] = imports
    return graph


def findCycles(graph: dict[str, Imports]) -> list[tuple[list[str], list[str]]]:
    """
    Each group of modules that import each other (each strongly connected
    component of more than one module): one import circle through it, as
    the modules in import order, the first repeated last; and all its
    modules.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    onStack: set[str] = set()
    components: list[set[str]] = []

    def connect(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        onStack.add(module)
        for target in graph[module]:
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in onStack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                onStack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(component)

    for module in sorted(graph):
        if module not in index:
            connect(module)

    cycles = []
    for component in components:
        start = min(component)
        # The shortest way back to start, within the component.
        paths = {start: [start]}
        frontier = [start]
        cycle: list[str] | None = None
        while cycle is None:
            following = []
            for module in frontier:
                for target in sorted(graph[module]):
                    if target == start:
                        cycle = paths[module] + [start]
                        break
                    if target in component and target not in paths:
                        paths[target] = paths[module] + [target]
                        following.append(target)
                if cycle is not None:
                    break
            frontier = following
        cycles.append((cycle, sorted(component)))
    return sorted(cycles)


def describe(cycles: list[tuple[list[str], list[str]]], graph: dict[str, Imports]) -> list[str]:
    """
    Each circle as C{a:12 -> b:30 -> a}, each module with the line of its
    import of the next, and the other modules of its group if any.
    """
    described = []
    for cycle, members in cycles:
        line = " -> ".join(f"{module}:{graph[module][cycle[i + 1]]}" for i, module in enumerate(cycle[:-1]))
        line += f" -> {cycle[-1]}"
        others = [m for m in members if m not in cycle]
        described.append(line + (f" (and {', '.join(others)} import each other with them)" if others else ""))
    return described


def test_noImportCycle() -> None:
    """
    No rosteradmin module imports, even for a type annotation only, a
    module that imports it back, directly or through others.
    """
    graph = importGraph(ROOT / "rosteradmin")
    assert len(graph) > 30 and sum(map(len, graph.values())) > 100  # it read the package
    circles = describe(findCycles(graph), graph)
    assert not circles, "import circles:\n" + "\n".join(circles)


def writePackage(root: Path, modules: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, source in modules.items():
        path = package / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return package


def test_typeOnlyCycleFound(tmp_path: Path) -> None:
    """
    A circle closed by an import under C{if TYPE_CHECKING:} is one, and is
    shown with the line of each import.
    """
    package = writePackage(tmp_path, {
        "__init__": "",
        "a": "from pkg.b import B\nA = 1\n",
        "b": ("from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n"
              "    from pkg.a import A\n"
              "B = 2\n"),
        "c": "from pkg import a\n",
    })
    graph = importGraph(package)
    assert graph == {"pkg": {}, "pkg.a": {"pkg.b": 1}, "pkg.b": {"pkg.a": 3}, "pkg.c": {"pkg.a": 1}}
    assert describe(findCycles(graph), graph) == ["pkg.a:1 -> pkg.b:3 -> pkg.a"]


def test_everyImportFormCounts(tmp_path: Path) -> None:
    """
    Relative imports, C{import p.m}, imports inside functions and subpackages
    all make edges; a circle through three modules is shown whole, and two
    separate circles are both shown.
    """
    package = writePackage(tmp_path, {
        "__init__": "",
        "a": "import pkg.sub.b\n",
        "sub.__init__": "",
        "sub.b": "from . import c\n",
        "sub.c": "def f():\n    from ..a import x\n",
        "d": "from .e import y\n",
        "e": "from pkg import d\n",
    })
    graph = importGraph(package)
    assert graph["pkg.sub.b"] == {"pkg.sub.c": 1}
    assert graph["pkg.sub.c"] == {"pkg.a": 2}
    assert describe(findCycles(graph), graph) == [
        "pkg.a:1 -> pkg.sub.b:1 -> pkg.sub.c:2 -> pkg.a",
        "pkg.d:1 -> pkg.e:1 -> pkg.d",
    ]


def test_wholeGroupShown(tmp_path: Path) -> None:
    """
    Modules caught in a group with more than one circle are all named, so
    that one run shows everything that must move.
    """
    package = writePackage(tmp_path, {
        "a": "from . import b, c\n",
        "b": "from . import a\n",
        "c": "from . import a\n",
    })
    graph = importGraph(package)
    assert describe(findCycles(graph), graph) == ["pkg.a:1 -> pkg.b:1 -> pkg.a (and pkg.c import each other with them)"]


def test_serviceImportsNoDemo() -> None:
    """
    The service (rosteradmin/) imports nothing of the demo and development
    servers (rosteradmin_demo/, not installed with it), not even for an
    annotation.
    """
    found = []
    for path in sorted((ROOT / "rosteradmin").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                      if name.split(".")[0] == "rosteradmin_demo"]
    assert found == []
