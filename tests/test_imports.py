"""The import graph of raysweep, from its source (ast, nothing imported): no import cycle, and no ``_private`` name
taken across modules. A ``_``-prefixed module (``raysweep/data/_base.py``) may be imported only from inside its own
package (its subpackages included). Every import counts, at module level or inside a function;
``from raysweep.x import y`` is an edge to the submodule ``raysweep.x.y`` when there is one; importing
``raysweep.a.b`` also imports the package ``raysweep.a`` (its ``__init__``), an edge too unless the importer lives
inside ``raysweep.a`` (its package is then already being imported). The graph builder is checked on small packages
written here.

Also: no test module imports another test module or a conftest (shared helpers are fixtures or live in
``tests/support``)."""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import ROOT


@dataclass
class ImportGraph:
    """``edges[a][b]``: where (``path:line``) module ``a`` first imports module ``b``; ``private``: one message per
    cross-module use of a ``_`` name."""

    edges: dict[str, dict[str, str]] = field(default_factory=dict)
    private: list[str] = field(default_factory=list)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _modules(root: Path) -> dict[str, Path]:
    """Every module of the package at ``root``: dotted name -> file (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(root: Path) -> ImportGraph:
    """The import graph of the package whose folder is ``root`` (its name is the folder's), and its private
    imports."""
    modules = _modules(root)
    top = root.name
    graph = ImportGraph({name: {} for name in modules})

    def package_of(name: str) -> str:
        return name if modules[name].name == "__init__.py" else name.rpartition(".")[0]

    def ancestors(name: str) -> list[str]:
        parts = name.split(".")
        return [".".join(parts[:i]) for i in range(1, len(parts))]

    def may_import_private_module(importer: str, target: str) -> bool:
        """A ``_`` module (or a module inside a ``_`` package) is open to its own package (and subpackages)."""
        parts = target.split(".")
        for i, part in enumerate(parts):
            if _is_private(part):
                owner = ".".join(parts[:i])
                if not (importer == owner or importer.startswith(owner + ".")):
                    return False
        return True

    for name, path in modules.items():
        where = f"{path.relative_to(root.parent)}"
        tree = ast.parse(path.read_text(), filename=str(path))
        bound: dict[str, str] = {}  # local name -> the package module it names
        imported: dict[str, str] = {}  # local name -> the module.name of a package object (class, function)

        def edge(target: str, line: int) -> None:
            if target not in modules or target == name:
                return
            graph.edges[name].setdefault(target, f"{where}:{line}")
            for parent in ancestors(target):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                if parent in modules and parent != name and parent not in ancestors(name):
                    graph.edges[name].setdefault(parent, f"{where}:{line} (importing {target})")
            if not may_import_private_module(name, target):
                graph.private.append(f"{where}:{line}: imports the private module {target}")

        for node in sorted(ast.walk(tree), key=lambda n: getattr(n, "lineno", 0)):  # first import: smallest line
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == top:
                        edge(alias.name, node.lineno)
                        bound[alias.asname or top] = alias.name if alias.asname else top
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the importer's package, up level - 1
                    base = package_of(name).split(".")
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != top:
                    continue
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    if sub in modules:  # a submodule
                        edge(sub, node.lineno)
                        bound[alias.asname or alias.name] = sub
                    else:
                        edge(source, node.lineno)
                        imported[alias.asname or alias.name] = sub
                        if _is_private(alias.name):
                            graph.private.append(f"{where}:{node.lineno}: from {source} import {alias.name}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)):
                edge(node.args[0].value, node.lineno)  # importlib.import_module("pkg.x") with a literal name

        for node in ast.walk(tree):  # m._x where m names a module of the package
            if not isinstance(node, ast.Attribute) or not _is_private(node.attr):
                continue
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if not isinstance(value, ast.Name) or value.id not in bound:
                continue
            module = ".".join([bound[value.id], *reversed(chain)])
            if module not in modules or module == name:
                continue
            target = f"{module}.{node.attr}"
            if target in modules and may_import_private_module(name, target):
                continue
            graph.private.append(f"{where}:{node.lineno}: {module}.{node.attr}")
        graph.private += [f"{where}:{line}: {text}" for line, text in _private_members(tree, imported)]
    return graph


def _private_members(tree: ast.Module, imported: dict[str, str]) -> list[tuple[int, str]]:
    """``C._x`` for a class (or function) ``C`` imported from another module, and ``v._x`` for a variable assigned
    ``v = C(...)`` in the same function (``results = ResultsCallback(...)``, then ``results._land(...)``)."""
    found: list[tuple[int, str]] = []
    scopes: list[dict[str, str]] = [{}]

    class Visitor(ast.NodeVisitor):
        def visit_FunctionDef(self, node):
            scopes.append({})
            self.generic_visit(node)
            scopes.pop()

        visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

        def visit_Assign(self, node):
            self.generic_visit(node)
            for target in node.targets:
                if isinstance(target, ast.Name):
                    call = node.value
                    made = (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                            and imported.get(call.func.id))
                    if made:
                        scopes[-1][target.id] = made
                    else:
                        scopes[-1].pop(target.id, None)

        def visit_Attribute(self, node):
            self.generic_visit(node)
            if not _is_private(node.attr) or not isinstance(node.value, ast.Name):
                return
            name = node.value.id
            if name in imported:
                found.append((node.lineno, f"{imported[name]}.{node.attr}"))
                return
            for scope in reversed(scopes):
                if name in scope:
                    found.append((node.lineno, f"{name}.{node.attr} (a {scope[name]})"))
                    return

    Visitor().visit(tree)
    return found


def cycles(graph: ImportGraph) -> list[list[str]]:
    """The import cycles: for every edge that closes one, the shortest cycle through it (each cycle once, starting
    at its smallest module)."""
    edges = graph.edges

    def path(src: str, dst: str) -> list[str] | None:
        """The shortest import path src -> ... -> dst (breadth first), or None."""
        prev, queue = {src: None}, deque([src])
        while queue:
            node = queue.popleft()
            if node == dst:
                out = []
                while node is not None:
                    out.append(node)
                    node = prev[node]
                return out[::-1]
            for nxt in sorted(edges.get(node, ())):
                if nxt not in prev:
                    prev[nxt] = node
                    queue.append(nxt)
        return None

    found = set()
    for a in sorted(edges):
        for b in sorted(edges[a]):
            back = path(b, a)
            if back is not None:
                cycle = [a, *back[:-1]]
                i = cycle.index(min(cycle))
                found.add(tuple(cycle[i:] + cycle[:i]))
    return [list(c) for c in sorted(found)]


def describe(graph: ImportGraph, cycle: list[str]) -> str:
    steps = zip(cycle, cycle[1:] + cycle[:1])
    return " -> ".join(cycle + cycle[:1]) + "\n" + "\n".join(f"    {a} -> {b}: {graph.edges[a][b]}" for a, b in steps)


# ------------------------------------------------------------------------------------------------------ raysweep


@pytest.fixture(scope="module")
def raysweep_graph() -> ImportGraph:
    return import_graph(ROOT / "raysweep")


def test_raysweep_has_no_import_cycle(raysweep_graph):
    found = cycles(raysweep_graph)
    assert not found, f"{len(found)} import cycles:\n" + "\n".join(describe(raysweep_graph, c) for c in found)


def test_no_private_name_crosses_a_module(raysweep_graph):
    private = raysweep_graph.private
    assert not private, f"{len(private)} private names used across modules:\n" + "\n".join(private)


def test_no_test_imports_another_test_module_or_a_conftest():
    def is_test_module(dotted: str) -> bool:
        return any(part == "conftest" or part.startswith("test_") for part in dotted.split("."))

    offending = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.split(".")[0] == "tests"]
            elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "tests"):
                source = "." * node.level + (node.module or "")
                names = [source] if is_test_module(source) else [f"{source.rstrip('.')}.{a.name}" for a in node.names]
            else:
                continue
            offending += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if is_test_module(n)]
    assert not offending, "\n".join(offending)


# ------------------------------------------------------------------------------ the builder on small packages


@pytest.fixture
def package(tmp_path):
    """``package({"a.py": source, "sub/__init__.py": ...})``: the folder of a package ``pkg`` holding them."""

    def write(files: dict[str, str]) -> Path:
        root = tmp_path / "pkg"
        for rel, source in {"__init__.py": "", **files}.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(source)
        return root

    return write


def test_a_cycle_is_found_through_functions_submodules_and_package_inits(package):
    root = package({
        "a.py": "from pkg import b\n",  # b is a submodule: an edge to pkg.b
        "b.py": "def f():\n    import pkg.a\n",  # inside a function: still an edge
        "c.py": "import pkg.sub.x\n",  # also runs pkg/sub/__init__.py
        "sub/__init__.py": "from pkg.sub.y import Y\n",
        "sub/x.py": "",
        "sub/y.py": "from .. import c\nY = 1\n",
    })
    graph = import_graph(root)
    assert cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.sub", "pkg.sub.y"]]
    assert graph.edges["pkg.b"]["pkg.a"] == "pkg/b.py:2"
    assert graph.edges["pkg.c"]["pkg.sub"] == "pkg/c.py:1 (importing pkg.sub.x)"
    assert "pkg.sub" not in graph.edges["pkg.sub.y"]  # a module's own package is already being imported
    assert graph.private == []


def test_private_names_and_modules_across_modules_are_found(package):
    root = package({
        "a.py": "from pkg.b import _helper, public, Thing\nimport pkg.b as bm\nfrom pkg import b\n"
                "def f():\n    return bm._other() + b._third + b.public\n"
                "def g():\n    thing = Thing()\n    return thing._state, Thing._made, thing.public\n",
        "b.py": "def _helper(): ...\ndef _other(): ...\n_third = 3\npublic = 4\n"
                "class Thing:\n    _made = 0\n    def __init__(self):\n        self._state = 1\n"
                "    def again(self):\n        other = Thing()\n        return other._state\n",
        "c.py": "from pkg.data._base import Task\nimport pkg.data\npkg.data._base.Task\n",
        "data/__init__.py": "from pkg.data._base import Task\n",
        "data/_base.py": "class Task: ...\n",
        "data/d.py": "from pkg.data import _base\nfrom . import _base as again\n",
    })
    assert sorted(import_graph(root).private) == [
        "pkg/a.py:1: from pkg.b import _helper",
        "pkg/a.py:5: pkg.b._other",
        "pkg/a.py:5: pkg.b._third",
        "pkg/a.py:8: pkg.b.Thing._made",
        "pkg/a.py:8: thing._state (a pkg.b.Thing)",
        "pkg/c.py:1: imports the private module pkg.data._base",
        "pkg/c.py:3: pkg.data._base",
    ]


def test_a_clean_package_passes(package):
    root = package({
        "__init__.py": "from pkg.errors import Oops\n__version__ = '1'\n",
        "errors.py": "class Oops(Exception): ...\n",
        "a.py": "from pkg import __version__, errors\nfrom .errors import Oops\nimport pkg.sub.x as x\n"
                "def f():\n    from pkg.sub import y\n    return x.public, y.__name__\n",
        "sub/__init__.py": "from pkg.sub.x import public\n",
        "sub/x.py": "from pkg.sub import _impl\npublic = _impl.value\n",
        "sub/_impl.py": "from ..errors import Oops\nvalue = 1\n",
        "sub/y.py": "import pkg.sub._impl\n",
    })
    graph = import_graph(root)
    assert cycles(graph) == [] and graph.private == []
    assert set(graph.edges["pkg.a"]) == {"pkg", "pkg.errors", "pkg.sub", "pkg.sub.x", "pkg.sub.y"}
