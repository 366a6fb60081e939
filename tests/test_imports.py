"""Every module imports; the public names resolve; the pure layer (loss, metrics, shaping) imports no model, HTTP or
file machinery, and `import rmkit` alone loads nothing heavy."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import rmkit

SRC = Path(rmkit.__file__).parent
MODULES = sorted(f"rmkit.{m.name}" for m in pkgutil.iter_modules([str(SRC)]) if m.name != "__main__")  # runs the CLI
PURE = {"loss": {"torch"}, "metrics": {"numpy"}, "shaping": {"numpy", "pydantic", "torch"}, "rules": {"numpy", "pydantic"}}


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    assert importlib.import_module(name).__doc__, f"{name} has no module docstring (the README file map needs one)"


@pytest.mark.parametrize("name", rmkit.__all__)
def test_every_public_name_resolves(name):
    assert getattr(rmkit, name) is not None


def _package(module: str) -> str:
    """'numpy.linalg' → 'numpy'; rmkit's own modules keep their name: 'rmkit.loss' → 'rmkit.loss'."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "rmkit" else parts[0]


def _top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {_package(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(_package(node.module))
    return names


@pytest.mark.parametrize("module, allowed", sorted(PURE.items()))
def test_the_pure_layer_imports_only_the_stdlib_and_its_array_library(module, allowed):
    pure = {f"rmkit.{m}" for m in PURE}  # a pure module may use another pure one
    third_party = _top_level_imports(SRC / f"{module}.py") - set(sys.stdlib_module_names) - {"__future__"} - pure
    assert third_party <= allowed, f"rmkit.{module} imports {sorted(third_party - allowed)}"


def test_import_rmkit_loads_neither_torch_nor_transformers():
    code = "import sys, rmkit; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
