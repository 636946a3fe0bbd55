"""The layers are written against the public Module API only: each layer file could be
copied into a user's project and work.

Core files (the Module system itself) may use private helpers; every other file in
``flaxen/nn`` is a layer file, so a new one is checked without being listed here.
"""

import ast
import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import nn

NN_DIR = pathlib.Path(nn.__file__).parent
# The Module system and its public helpers; everything else in flaxen/nn is a layer file.
CORE = {"__init__.py", "_context.py", "base.py", "collection.py", "stochastic.py",
        "summary.py", "export.py", "utils.py", "initializers.py"}
LAYER_FILES = sorted(p for p in NN_DIR.glob("*.py") if p.name not in CORE)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_uses(path: pathlib.Path) -> list[str]:
    """Each import of a private flaxen module or name, and each private attribute read on
    an object other than ``self``/``cls`` (such as ``module._frame``), as ``line: text``."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                found.append(f"{node.lineno}: relative import (copies of the file break)")
                continue
            mod = node.module or ""
            if mod.split(".")[0] != "flaxen":
                continue
            names = [a.name for a in node.names]
            if any(_private(part) for part in mod.split(".")) or any(map(_private, names)):
                found.append(f"{node.lineno}: from {mod} import {', '.join(names)}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "flaxen" and any(_private(p) for p in parts):
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_there_are_layer_files():
    names = {p.name for p in LAYER_FILES}
    assert {"linear.py", "conv.py", "normalization.py", "attention.py", "recurrent.py",
            "dropout.py", "pooling.py", "cache.py"} <= names


@pytest.mark.parametrize("path", LAYER_FILES, ids=lambda p: p.name)
def test_layer_file_uses_only_public_flaxen_names(path):
    found = _private_uses(path)
    assert not found, (
        f"{path.name} uses private flaxen API (layers must be forkable: use the public "
        "Module API and flaxen.nn.utils):\n" + "\n".join(found))


def test_the_check_catches_private_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from flaxen.nn._context import current_path\n"
                   "from flaxen.nn.base import _Frame\n"
                   "import flaxen.nn._context\n"
                   "from . import linear\n"
                   "def f(module):\n    return module._frame\n")
    assert [line.split(":")[0] for line in _private_uses(bad)] == ["1", "2", "3", "4", "6"]


def _load_copy(path: pathlib.Path, tmp_path: pathlib.Path, name: str, monkeypatch):
    """Imports a copy of ``path`` saved as ``tmp_path/name.py`` (a user's own module)."""
    copy = tmp_path / f"{name}.py"
    copy.write_text(path.read_text())
    spec = importlib.util.spec_from_file_location(name, copy)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # as an import would (dataclasses need it)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", LAYER_FILES, ids=lambda p: p.name)
def test_a_copied_layer_file_imports(path, tmp_path, monkeypatch):
    copied = _load_copy(path, tmp_path, f"my_{path.stem}", monkeypatch)
    original = importlib.import_module(f"flaxen.nn.{path.stem}")
    public = {n for n in vars(original) if not n.startswith("_")}
    assert public <= set(vars(copied))


def test_a_copied_dense_matches_the_library_dense(tmp_path, monkeypatch):
    my_linear = _load_copy(NN_DIR / "linear.py", tmp_path, "my_linear", monkeypatch)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3)), jnp.float32)
    key = jax.random.PRNGKey(0)
    kw = dict(features=4, param_dtype=jnp.bfloat16)
    y_mine, p_mine = my_linear.Dense.init(key, x, **kw)
    y_lib, p_lib = nn.Dense.init(key, x, **kw)
    assert p_mine["kernel"].dtype == jnp.bfloat16
    jax.tree.map(np.testing.assert_array_equal, p_mine, p_lib)
    np.testing.assert_array_equal(y_mine, y_lib)
