"""The package's import structure: arrows point down only (also counting imports inside functions and under
``TYPE_CHECKING``), no module reaches into another module's private names, and only ``ghostvlad.cli`` may
import the CLI."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1] / "src" / "ghostvlad"
PACKAGE = "ghostvlad"


def module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(source: str, package: str) -> list[tuple[str, tuple[str, ...], int]]:
    """``(imported module, names taken from it, line)`` for every import statement anywhere in ``source`` (a
    module of ``package``): at module level, inside functions and classes, under ``if TYPE_CHECKING``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.append((base, tuple(alias.name for alias in node.names), node.lineno))
    return found


def imports(name: str) -> list[tuple[str, tuple[str, ...], int]]:
    path = MODULES[name]
    return imports_of(path.read_text(), name if path.name == "__init__.py" else name.rpartition(".")[0])


def resolve(target: str, names: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """The package modules an import reaches: ``from pkg import mod`` reaches ``pkg.mod``, others ``pkg``."""
    if target not in MODULES:
        return []
    submodules = [n for n in names if f"{target}.{n}" in MODULES]
    out = [(f"{target}.{n}", ()) for n in submodules]
    rest = tuple(n for n in names if n not in submodules)
    if rest or not names:
        out.append((target, rest))
    return out


def graph() -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(MODULES)
    for name in MODULES:
        for target, names, line in imports(name):
            for module, taken in resolve(target, names):
                if module != name:
                    g.add_edge(name, module, line=line, names=taken)
    return g


def test_imports_are_found_everywhere_and_resolved():
    source = """
import os, ghostvlad.audio
from typing import TYPE_CHECKING
from . import features
from ..errors import describe
if TYPE_CHECKING:
    from .inference import SpeakerModel

def f():
    from .windows import _private
class C:
    def g(self):
        from ghostvlad.scoring import metrics
"""
    found = {(target, names) for target, names, _ in imports_of(source, "ghostvlad.serve")}
    assert found == {("os", ()), ("ghostvlad.audio", ()), ("typing", ("TYPE_CHECKING",)),
                     ("ghostvlad.serve", ("features",)), ("ghostvlad.errors", ("describe",)),
                     ("ghostvlad.serve.inference", ("SpeakerModel",)), ("ghostvlad.serve.windows", ("_private",)),
                     ("ghostvlad.scoring", ("metrics",))}
    assert resolve("ghostvlad.scoring", ("metrics", "eer")) == [("ghostvlad.scoring.metrics", ()),
                                                                ("ghostvlad.scoring", ("eer",))]
    assert resolve("numpy", ("array",)) == []
    assert len(graph().edges) > 100


def test_import_graph_is_acyclic():
    g = graph()
    cycles = list(nx.simple_cycles(g))
    shown = ["  " + " -> ".join(c + [c[0]]) for c in sorted(cycles, key=len)[:10]]
    assert not cycles, f"{len(cycles)} import cycles, e.g.:\n" + "\n".join(shown)


def test_no_module_imports_private_names_of_another():
    bad = []
    for name in MODULES:
        for target, names, line in imports(name):
            if not target.startswith(PACKAGE):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private += [p for p in target.split(".") if p.startswith("_") and not p.startswith("__")]
            if private:
                bad.append(f"{MODULES[name].relative_to(ROOT.parent)}:{line}: {target} {', '.join(private)}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_library_code_never_imports_the_cli():
    g = graph()
    bad = [f"{a} -> {b} (line {g.edges[a, b]['line']})" for a, b in g.edges
           if b.startswith(f"{PACKAGE}.cli") and not a.startswith(f"{PACKAGE}.cli") and a != f"{PACKAGE}.__main__"]
    assert not bad, "library modules importing the CLI:\n" + "\n".join(bad)
