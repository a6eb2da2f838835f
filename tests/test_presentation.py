"""Presentation and errors: library code reports through callbacks and raises from one package root; only the CLI
draws and prints, and it catches that root rather than bare ``ValueError``."""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import ghostvlad
from ghostvlad.errors import GhostvladError

PACKAGE = Path(ghostvlad.__file__).parent
DRAWING = ("rich", "tqdm", "ghostvlad.cli")


def _modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(ghostvlad.__path__, "ghostvlad.")]
    return [n for n in names if n != "ghostvlad.__main__"]  # importing it runs the CLI


def _imported(tree: ast.AST, module: str) -> set[str]:
    """Absolute names of everything ``module`` imports, at any depth (also inside functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.rsplit(".", node.level)[0]
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def test_every_exception_class_of_the_package_derives_from_its_root_and_has_its_own_name():
    strays, homes = [], {}
    for name in _modules():
        module = importlib.import_module(name)
        for cls in vars(module).values():
            if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == name:
                homes.setdefault(cls.__qualname__, []).append(name)
                if not issubclass(cls, GhostvladError):
                    strays.append(f"{name}.{cls.__qualname__}")
    assert len(_modules()) > 40  # the walk saw the whole package
    assert strays == []
    assert {k: v for k, v in homes.items() if len(v) > 1} == {}  # one name, one error: `except X` is unambiguous


def test_library_code_never_draws_or_imports_the_cli():
    offenders = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("cli/") or rel == "__main__.py":
            continue
        module = "ghostvlad." + rel.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        imported = _imported(ast.parse(path.read_text()), module if not rel.endswith("__init__.py") else
                             module + ".__init__")
        if any(n == d or n.startswith(d + ".") for n in imported for d in DRAWING):
            offenders.add(rel)
    assert offenders == set()


def test_the_cli_catches_the_package_root_not_bare_value_error():
    offenders = set()
    for path in (PACKAGE / "cli").glob("*.py"):
        for func in ast.walk(ast.parse(path.read_text())):
            if not isinstance(func, ast.FunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ExceptHandler) and node.type is not None:
                    types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
                    if any(isinstance(t, ast.Name) and t.id == "ValueError" for t in types):
                        offenders.add((path.name, func.name))
    assert offenders == set()
