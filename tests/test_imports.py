"""The package's imports flow one way: no cycle between files, none between packages.

Every ``import``/``from ... import`` of ``pathunlearn`` modules counts, wherever it sits (module
level, inside a function, under ``TYPE_CHECKING``): a local import breaks a cycle at run time,
not in the design. Packages are ``data``, ``eval``, ``train``, ``report``, ``theory``; each
top-level module (``config``, ``plan``, ``methods`` ...) is a node of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
PACKAGE = "pathunlearn"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The pathunlearn modules ``path`` imports (``from pkg import mod`` names ``pkg.mod``
    when that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
    found = {m for m in found if m in modules}
    return found - {name}


def graph() -> dict[str, set[str]]:
    files = sorted((SRC / PACKAGE).rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph, or None (depth-first search, colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def package_of(module: str) -> str:
    """``pathunlearn.train.unlearn`` -> ``pathunlearn.train``; a top-level module is its own
    node; the package's __init__ is ``pathunlearn``."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_import_cycle_between_files():
    edges = graph()
    # a package __init__ is imported by every module under it; only its own imports matter
    assert find_cycle({m: {d for d in deps if not m.startswith(d + ".")}
                       for m, deps in edges.items()}) is None


def test_no_import_cycle_between_packages():
    packages: dict[str, set[str]] = {}
    for module, deps in graph().items():
        src = package_of(module)
        packages.setdefault(src, set()).update(
            package_of(d) for d in deps if package_of(d) != src and d != PACKAGE)
    assert find_cycle(packages) is None


def test_the_graph_sees_known_edges():
    edges = graph()
    assert "pathunlearn.plan" in edges["pathunlearn.train.paths"]
    assert "pathunlearn.losses" in edges["pathunlearn.eval.saturation"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("layer", ["config", "errors", "files", "losses", "metrics"])
def test_low_layers_import_no_pipeline_step(layer):
    deps = graph()[f"pathunlearn.{layer}"]
    assert not {d for d in deps if package_of(d) in {"pathunlearn.train", "pathunlearn.report",
                                                     "pathunlearn.experiment", "pathunlearn.cli"}}


# The picture of ARCHITECTURE.md as layers, bottom first: a module imports only modules of a
# lower layer (or of its own package). The pipeline runs left to right along the top rows;
# the foundation is what every step may use. A new module must be put in a layer here.
LAYERS: list[set[str]] = [
    {"errors", "memo", "metrics", "timing"},
    {"files", "extras", "hub"},
    {"data", "distributed", "figures"},
    {"config", "losses", "tiny"},
    {"models", "eval", "methods", "keys", "theory"},
    {"checks", "serve", "rewrite"},
    # the pipeline
    {"plan"},
    {"rundir"},
    {"train"},
    {"executors", "tracking"},
    {"report"},
    {"experiment"},
    {"cli"},
    {"__main__"},
]


def layer_of(node: str) -> int:
    name = node.removeprefix(PACKAGE + ".")
    found = [i for i, layer in enumerate(LAYERS) if name in layer]
    assert found, f"{node}: in no layer of LAYERS (tests/test_imports.py); put it in one"
    return found[0]


def test_every_import_points_down_the_picture():
    wrong = []
    for module, deps in graph().items():
        src = package_of(module)
        if src == PACKAGE:  # the package's own __init__
            continue
        for dep in deps:
            dst = package_of(dep)
            if dst in (src, PACKAGE):
                continue
            if layer_of(dst) >= layer_of(src):
                wrong.append(f"{module} imports {dep}")
    assert not wrong, "imports against ARCHITECTURE.md's picture:\n" + "\n".join(wrong)


def test_layers_name_each_node_once():
    names = [n for layer in LAYERS for n in layer]
    assert len(names) == len(set(names))
    nodes = {package_of(m).removeprefix(PACKAGE + ".") for m in graph()} - {PACKAGE}
    assert nodes == set(names), (nodes ^ set(names))
