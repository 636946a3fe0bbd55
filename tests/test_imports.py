"""Every flaxen module imports on its own, and module-level imports form no cycle.

A cycle among module-level imports makes the import order matter (a module half
initialised when another reads from it); the graph check finds one from the source alone,
so it fails on the change that adds it, whichever module a user happens to import first.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "flaxen")


def _modules() -> dict[str, str]:
    """``{dotted module name: file path}`` of every module in the flaxen package."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _top_level_imports(module: str, path: str) -> set[str]:
    """flaxen modules imported when ``module`` is executed: imports at module level and in
    module-level ``if``/``try`` blocks, not inside functions, classes' methods, or an
    ``if TYPE_CHECKING:`` block."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    found: set[str] = set()

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, node, is_package)
                found.add(target)
                # `from flaxen import parallel` imports the module flaxen.parallel.
                found.update(f"{target}.{a.name}" for a in node.names)
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)  # a class body runs at import time

    visit(tree.body)
    return {m for m in found if m in MODULES and m != module}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def _graph() -> dict[str, set[str]]:
    graph = {m: _top_level_imports(m, p) for m, p in MODULES.items()}
    # Importing a submodule first runs its parent packages' __init__.
    for m in MODULES:
        parent = m.rsplit(".", 1)[0] if "." in m else None
        while parent and parent in MODULES:
            graph[m].add(parent)
            parent = parent.rsplit(".", 1)[0] if "." in parent else None
    # A package's __init__ importing its own submodule is the usual layering, and the
    # submodule depending on its package is implied by Python, not a real cycle: drop it.
    for m in MODULES:
        graph[m] = {d for d in graph[m] if not (m.startswith(d + ".") and d in MODULES)}
    return graph


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_graph_sees_imports():
    graph = _graph()
    assert "flaxen.optim.base" in graph["flaxen.optim.momentum"]
    assert "flaxen.traverse_util" in graph["flaxen.optim.base"]


def test_no_cycle_among_module_level_imports():
    cycle = _find_cycle(_graph())
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle or [])


# One subprocess imports the third-party stack once, then forks one child per flaxen
# module: each child starts with no flaxen module loaded and imports just that one, which
# is what `python -c "import flaxen.x"` checks, without paying JAX's import per module.
_ALONE = """
import os, sys, traceback
import jax, numpy, optax  # noqa: F401  (third-party, shared by the children)
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name)
print("FAILED:", " ".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_each_module_imports_alone():
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _ALONE, *sorted(MODULES)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
