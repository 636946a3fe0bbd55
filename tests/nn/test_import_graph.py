"""flaxen.nn has no import circle: the core imports no layer, a layer imports the core
and other layers, and no two files import each other (directly or through others).

The graph is read from the source (top-level ``import``/``from ... import`` statements of
``flaxen/nn/*.py``; imports inside functions are left out, as they run later).
"""

import ast
import pathlib

from flaxen import nn

NN_DIR = pathlib.Path(nn.__file__).parent


def _imports(path: pathlib.Path) -> set[str]:
    """The flaxen.nn modules (by file stem) imported at the top level of ``path``."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "flaxen.nn":  # from flaxen.nn import initializers
                out.update(a.name for a in node.names)
            elif node.module.startswith("flaxen.nn."):
                out.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[2] for a in node.names
                       if a.name.startswith("flaxen.nn."))
    return {m for m in out if (NN_DIR / f"{m}.py").exists()}


def graph() -> dict[str, set[str]]:
    return {p.stem: _imports(p) for p in NN_DIR.glob("*.py") if p.stem != "__init__"}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None."""
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(edges.get(node, ())):
            cycle = visit(nxt, stack + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(edges):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_no_import_circle_in_flaxen_nn():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle in flaxen/nn: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_core_imports_no_layer():
    core = {"base", "_context", "collection", "stochastic", "initializers", "utils",
            "init_cache"}
    edges = graph()
    for name in core:
        assert edges[name] <= core, f"{name}.py imports layer files {edges[name] - core}"
