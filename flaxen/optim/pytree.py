"""A flat pytree node for ``Optimizer``: one Python call per ``jit`` boundary crossing.

A nested pytree (``Optimizer`` -> ``OptimizerState`` -> optax named tuples, ``Model`` ->
params dict) costs ``jax.jit`` a flatten of every node on the way in and a rebuild of every
node, with its ``__init__``, on the way out, on every call. For a small model that work is
a measurable share of the step. Registered with ``register_flat_node``, the class is one
node instead:

* children: the flat list of the leaves of ``(state, target)``;
* static data: one interned ``_Static`` holding the definition and the structure
  (``PyTreeDef``) of ``(state, target)``, whose hash is computed once and whose equality
  is identity in the common case, so ``jit``'s cache check is cheap;
* rebuilding (unflatten) stores the leaves and the static data and nothing else;
  ``state`` and ``target`` are rebuilt from them only when first read.

A training loop that only passes the optimizer from one jitted step to the next thus
never rebuilds the nested objects at all. Paths (``jax.tree_util.tree_flatten_with_path``)
read ``state/step``, ``target/params/Dense_0/kernel``, ... (``path_to_str`` spelling).
"""

from __future__ import annotations

import weakref
from typing import Any, TypeVar

import jax
from jax.tree_util import GetAttrKey

from flaxen.traverse_util import path_to_str

T = TypeVar("T")

_NAMES = ("state", "target")


class _Static:
    """The static part of an optimizer: its definition and the treedef of (state, target)."""

    __slots__ = ("optimizer_def", "treedef", "_hash", "keys", "__weakref__")

    def __init__(self, optimizer_def: Any, treedef: Any):
        self.optimizer_def = optimizer_def
        self.treedef = treedef
        self._hash = hash((optimizer_def, treedef))
        self.keys: list[GetAttrKey] | None = None  # leaf paths, computed when first asked

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (type(other) is _Static and self._hash == other._hash
                                 and self.optimizer_def == other.optimizer_def
                                 and self.treedef == other.treedef)

    def __repr__(self) -> str:
        return f"Static({self.optimizer_def!r})"


# One _Static per (definition, structure): the static data of a jitted step's output is
# then the very object its input had, and jit's cache comparison stops at ``is``. Weak, so
# a definition nothing uses any more (no optimizer, no jit cache entry) is freed.
_INTERNED: weakref.WeakKeyDictionary[_Static, weakref.ref[_Static]] = (
    weakref.WeakKeyDictionary())


def _intern(static: _Static) -> _Static:
    ref = _INTERNED.get(static)
    found = None if ref is None else ref()
    if found is None:
        _INTERNED[static] = weakref.ref(static)
        return static
    return found


def _flatten(obj: Any) -> tuple[Any, _Static]:
    d = obj.__dict__
    leaves = d.get("_leaves")
    if leaves is None:  # built from (state, target): flatten them once and keep the result
        leaves, treedef = jax.tree.flatten((d["state"], d["target"]))
        d["_leaves"] = leaves
        d["_static"] = _intern(_Static(d["optimizer_def"], treedef))
    return leaves, d["_static"]


def _keys(obj: Any, static: _Static) -> list[GetAttrKey]:
    if static.keys is None:
        flat, _ = jax.tree_util.tree_flatten_with_path((obj.state, obj.target))
        static.keys = [GetAttrKey(path_to_str((_NAMES[p[0].idx], *p[1:])))  # type: ignore[attr-defined]
                       for p, _ in flat]
    return static.keys


def _flatten_with_keys(obj: Any) -> tuple[list[tuple[GetAttrKey, Any]], _Static]:
    leaves, static = _flatten(obj)
    return list(zip(_keys(obj, static), leaves)), static


def _materialize(obj: Any, name: str) -> Any:
    """``__getattr__`` of a flat node: rebuild ``state`` and ``target`` on first read."""
    d = obj.__dict__
    if name in _NAMES and "_static" in d:
        d["state"], d["target"] = jax.tree.unflatten(d["_static"].treedef, d["_leaves"])
        return d[name]
    raise AttributeError(f"{type(obj).__name__!r} object has no attribute {name!r}")


def register_flat_node(cls: type[T]) -> type[T]:
    """Registers ``cls`` (fields ``optimizer_def``, ``state``, ``target``) as a flat node."""

    def unflatten(static: _Static, leaves: Any) -> Any:
        obj = object.__new__(cls)
        d = obj.__dict__
        d["optimizer_def"] = static.optimizer_def
        d["_leaves"] = leaves
        d["_static"] = static
        return obj

    cls.__getattr__ = _materialize  # type: ignore[attr-defined]
    jax.tree_util.register_pytree_with_keys(cls, _flatten_with_keys, unflatten,
                                            flatten_func=_flatten)
    return cls
