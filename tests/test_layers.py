"""The package's layers, as docs/architecture.md draws them, checked on the import statements
(every import, including the lazy ones inside functions):

* serving (the calculator and everything it runs on: models, descriptors, graph, neighbour
  lists, model files, data, export) and the shared services (metrics, console, figures) import
  nothing from training, the workflows or the command line;
* training imports nothing from the workflows or the command line (both sit beside it and
  share the services below);
* the workflows import nothing from the command line;
* no module is longer than 800 lines (a longer one holds more than one idea).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import ase_mlff

PACKAGE = pathlib.Path(ase_mlff.__file__).parent
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "_ext" not in p.parts)

TRAINING, WORKFLOWS = "ase_mlff.training", "ase_mlff.workflows"
CLI = ("ase_mlff.cli", "ase_mlff.cli_workflows", "ase_mlff.__main__")
#: the layer of a module (by dotted-name prefix) -> the prefixes it must not import
FORBIDDEN = {
    TRAINING: (WORKFLOWS, *CLI),
    WORKFLOWS: CLI,
    "serving": (TRAINING, WORKFLOWS, *CLI),
}


def dotted(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(name: str) -> str | None:
    if name == "ase_mlff" or name.startswith(CLI):
        return None  # the package root (lazy public entry points) and the command line
    for prefix in (TRAINING, WORKFLOWS):
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    return "serving"


def imported(path: pathlib.Path) -> set[str]:
    """Absolute names of every module ``path`` imports (``from . import x`` counts as ``pkg.x``)."""
    name = dotted(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in out if m.startswith("ase_mlff")}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path):
    own = layer(dotted(path))
    if own is None:
        return
    bad = sorted(m for m in imported(path) for f in FORBIDDEN[own] if m == f or m.startswith(f + "."))
    assert not bad, f"{dotted(path)} ({own} layer) imports {bad}"


def test_the_checker_sees_relative_and_lazy_imports(tmp_path):
    pkg = tmp_path / "ase_mlff" / "models"
    pkg.mkdir(parents=True)
    mod = pkg / "x.py"
    mod.write_text("def f():\n    from ..training.common import Option\n    from ..workflows import md\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "ase_mlff"
    try:
        assert {"ase_mlff.training.common", "ase_mlff.workflows"} <= imported(mod)
    finally:
        PACKAGE = saved


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_800_lines(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= 800, f"{path.relative_to(PACKAGE)} has {n} lines: split it into modules of one idea"
