"""The shape of the package, kept true by tests: the import graph of src/rmkit (function-local and TYPE_CHECKING
imports included) has no cycle and no import pointing up the layers, no module is over 400 lines and no function
over 60."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rmkit

SRC = Path(rmkit.__file__).parent
LAYERS = [
    # 0 pure: arrays, tensors or JSON values in and out; no files, models or HTTP
    {"loss", "metrics", "diagnostics", "shaping", "contract", "protocols", "gym", "rowshapes", "dialects", "rules"},
    # 1 I/O: files, configs, tokenizers, checkpoints, the model
    {"rows", "config", "serveconfig", "data", "splits", "targets", "encoding", "backbones", "card", "heads", "model",
     "build", "checkpoint", "moments", "objectives", "sharding", "steps"},
    # 2 engine: scoring and what builds on it, the HTTP plumbing
    {"scoring", "ensemble", "calibration", "evaluation", "report", "selection", "batcher", "gateway", "client",
     "service", "modelcard", "composition"},
    # 3 edges: recipes, the server, the RL adapters
    {"training", "routes", "playground", "server", "rl", "rollouts", "grpo"},
    # 4 the command line
    {"cli", "__main__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def modules() -> list[str]:
    return sorted(p.stem for p in SRC.glob("*.py") if p.stem != "__init__")


def imports_of(name: str) -> set[str]:
    """rmkit modules that `name` imports anywhere in its source (top level, in functions, under TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse((SRC / f"{name}.py").read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("rmkit.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("rmkit."):
                found.add(node.module.split(".")[1])
            elif node.module == "rmkit":  # `from rmkit import metrics`: a module, or a name of the package itself
                found |= {a.name for a in node.names if (SRC / f"{a.name}.py").exists()}
    return found - {name}


GRAPH = {name: imports_of(name) for name in modules()}


def test_every_module_has_a_layer():
    assert set(GRAPH) <= set(LAYER), f"give these modules a layer in LAYERS: {sorted(set(GRAPH) - set(LAYER))}"


@pytest.mark.parametrize("name", modules())
def test_imports_point_down_the_layers(name):
    up = sorted(m for m in GRAPH[name] if LAYER[m] > LAYER[name])
    assert not up, f"rmkit.{name} (layer {LAYER[name]}) imports higher layers: {up}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a path [a, b, ..., a], or None. find_cycle({"a": {"b"}, "b": {"a"}}) → ["a", "b", "a"]."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_has_no_cycle():
    assert find_cycle(GRAPH) is None, f"import cycle: {' → '.join(find_cycle(GRAPH))}"


@pytest.mark.parametrize("name", modules())
def test_modules_and_functions_stay_small(name):
    source = (SRC / f"{name}.py").read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"rmkit.{name} is over {MAX_MODULE_LINES} lines: split it"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"rmkit.{name} has functions over {MAX_FUNCTION_LINES} lines: {long}"
