"""Text tables of a model: its parameters, and each module's output shape and FLOPs.

``nn.summary(CNN, [((1, 28, 28, 1), jnp.float32)])`` traces the model with
``jax.eval_shape``, so it allocates no parameters and runs nothing. Given input shapes
(always, for a Module class; optionally, for a ``Model``), a second table lists every module
run, in call order: its output shape and dtype, and the FLOPs XLA counts when it compiles
that module alone on those shapes (``jax.jit(...).lower(...).compile().cost_analysis()``).

What a FLOP is here: XLA's count for the compiled forward pass on the given input shapes,
the module and everything it calls. A multiply-add is 2 FLOPs (a ``Dense`` from ``n`` to
``m`` features on a batch ``b`` is ``2*b*n*m`` for the matrix product plus ``b*m`` for the
bias); each elementwise op is 1 per element (a ReLU, an add, a comparison); data movement
(reshapes, transposes, copies) is 0. It is the backend's count (the CPU and GPU compilers may
fuse or rewrite differently), for the forward pass only (a training step's backward pass
costs about twice more).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np

from flaxen.nn import base
from flaxen.nn.base import Model, Module, _as_spec
from flaxen.nn.collection import Collection, stateful
from flaxen.nn.stochastic import stochastic
from flaxen.traverse_util import path_to_str


def _key() -> jax.Array:
    """The key dropout and other stochastic modules draw from (made on use: an array made
    at import would start JAX's backend before ``jax.distributed.initialize``)."""
    return jax.random.PRNGKey(0)


def _init_shapes(module: type[Module], specs: list[Any], args: tuple,
                 kwargs: dict) -> tuple[Any, dict[str, Any]]:
    """``(params, state)`` of ``module.init`` as ``ShapeDtypeStruct``s (nothing is run)."""
    def init(key: jax.Array, *xs: Any) -> tuple[Any, Any]:
        with stochastic(key):
            _, params, state = module.init_with_state(key, *xs, *args, **kwargs)
        return params, state

    params, state = jax.eval_shape(init, _key(), *specs)
    return params, state.as_dict()


def _param_shapes(target: Any, input_specs: Iterable[Any] | None, args: tuple,
                  kwargs: dict) -> Any:
    if isinstance(target, Model):
        return target.params
    if isinstance(target, type) and issubclass(target, Module):
        if input_specs is None:
            raise ValueError(f"summary({target.__name__}) needs input_specs, e.g. "
                             "[((1, 28, 28, 1), jnp.float32)].")
        return _init_shapes(target, [_as_spec(s) for s in input_specs], args, kwargs)[0]
    if isinstance(target, dict):
        return target
    raise TypeError(f"summary expects a Module class, a Model or a params dict, got "
                    f"{type(target).__name__}.")


def summary(target: Any, input_specs: Iterable[Any] | None = None, *args: Any,
            **kwargs: Any) -> str:
    """Returns the parameter table and, given input shapes, the table of module outputs.

    Args:
      target: a Module class (then ``input_specs`` is required), a ``Model`` or params.
      input_specs: as for ``Module.init_by_shape``: one ``(shape, dtype)`` per leading input
        of ``apply``. With a ``Model``, optional: without it only parameters are listed.
      *args, **kwargs: further arguments of ``apply``.

    Returns:
      The tables as a string. Parameters: path, shape, dtype, count, bytes, a subtotal per
      module and the total. Modules (with ``input_specs``): path, class, output shape and
      dtype, FLOPs (see the module docstring for what is counted).
    """
    tree = _param_shapes(target, input_specs, args, kwargs)
    table = _params_table(tree)
    if input_specs is None or isinstance(target, dict):
        return table
    module = target.module if isinstance(target, Model) else target
    specs = [_as_spec(s) for s in input_specs]
    try:  # the state's shapes (BatchNorm statistics), from an abstract init
        state = _init_shapes(module, specs, args, kwargs)[1]
    except Exception:  # noqa: BLE001
        if not isinstance(target, Model):
            raise
        # A Model's params may not be what init makes (bfloat16 params): without state.
        state = {}
    return table + "\n\n" + _modules_table(module, tree, state, specs, args, kwargs)


# -- parameters ---------------------------------------------------------------------------


def _params_table(tree: Any) -> str:
    rows: list[tuple[str, str, str, int, int]] = []
    per_module: dict[str, tuple[int, int]] = {}
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        path = path_to_str(("params", *key_path))  # as every flaxen message spells it
        shape = tuple(leaf.shape)
        dtype = np.dtype(leaf.dtype)
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        rows.append((path, str(shape), dtype.name, count, nbytes))
        module = _module_of(path)
        c, b = per_module.get(module, (0, 0))
        per_module[module] = (c + count, b + nbytes)
    total_count = sum(r[3] for r in rows)
    total_bytes = sum(r[4] for r in rows)
    labels = [r[0] for r in rows] + [f"  {m} (module)" for m in per_module]
    width = max([len("path"), len("total")] + [len(label) for label in labels]) + 2
    header = f"{'path':<{width}}{'shape':<20}{'dtype':<10}{'params':>12}{'bytes':>14}"
    lines = [header, "-" * len(header)]
    by_module: dict[str, list[tuple[str, str, str, int, int]]] = {}
    for row in rows:  # group rows by module, in order of first appearance
        by_module.setdefault(_module_of(row[0]), []).append(row)
    for module, module_rows in by_module.items():
        for path, shape_str, dtype_name, count, nbytes in module_rows:
            lines.append(
                f"{path:<{width}}{shape_str:<20}{dtype_name:<10}{count:>12,}{nbytes:>14,}")
        lines.append(_subtotal(module, per_module, width))
    lines.append("-" * len(header))
    lines.append(f"{'total':<{width}}{'':<20}{'':<10}{total_count:>12,}{total_bytes:>14,}")
    return "\n".join(lines)


def _module_of(param_path: str) -> str:
    """``params/Conv_0/kernel`` -> ``Conv_0``; a parameter of the root module -> ``(root)``."""
    module = param_path.split("/", 1)[1].rpartition("/")[0]
    return module or "(root)"


def _subtotal(module: str, per_module: dict[str, tuple[int, int]], width: int) -> str:
    count, nbytes = per_module[module]
    label = f"  {module} (module)"
    return f"{label:<{width}}{'':<20}{'':<10}{count:>12,}{nbytes:>14,}"


# -- module outputs and FLOPs ------------------------------------------------------------------


def _abstract(tree: Any) -> Any:
    """Arrays (and tracers) as ``ShapeDtypeStruct``s; other leaves as they are."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
                        if isinstance(x, jax.Array | np.ndarray) else x, tree)


@contextlib.contextmanager
def _recording(calls: list[tuple]) -> Iterator[None]:
    def record(frame: Any, cls: type[Module], args: tuple, kwargs: dict, out: Any) -> None:
        calls.append((frame.path, cls, frame.name, _abstract(frame.params), _abstract(args),
                      _abstract(kwargs), _abstract(out)))

    base._call_recorders.append(record)
    try:
        yield
    finally:
        base._call_recorders.remove(record)


def _flops(cls: type[Module], name: str | None, params: Any, state: dict[str, Any],
           args: tuple, kwargs: dict) -> float | str:
    """XLA's FLOP count of ``cls`` run alone on these shapes, or why there is none."""
    leaves, treedef = jax.tree.flatten((args, kwargs))
    is_array = [isinstance(x, jax.ShapeDtypeStruct) for x in leaves]
    arrays = [x for x, a in zip(leaves, is_array) if a]

    def run(key: jax.Array, params: Any, state: dict[str, Any], arrays: list[Any]) -> Any:
        it = iter(arrays)
        call_args, call_kwargs = jax.tree.unflatten(
            treedef, [next(it) if a else x for x, a in zip(leaves, is_array)])
        with stochastic(key), stateful(Collection(state)):
            return cls.call(params, *call_args, name=name, **call_kwargs)

    try:
        cost = jax.jit(run).lower(_key(), params, state, arrays).compile().cost_analysis()
    except Exception as e:  # noqa: BLE001 - shown in the table's notes instead
        return f"{type(e).__name__}"
    if isinstance(cost, list | tuple):  # older JAX: one dict per computation
        cost = cost[0] if cost else {}
    return float(cost["flops"]) if cost and "flops" in cost else "n/a"


def _shape_str(out: Any) -> str:
    leaves = jax.tree.leaves(out)
    if not leaves:
        return "-"
    parts = [f"{x.dtype}{list(x.shape)}" if hasattr(x, "shape") else type(x).__name__
             for x in leaves]
    return ", ".join(parts)


def _state_of(state: dict[str, Any], path: str, name: str | None) -> dict[str, Any]:
    """The state entries below the module at ``path``, re-rooted at ``/name``: the paths
    that module sees when it runs alone as ``cls.call(..., name=name)``."""
    if path == "/":
        return state
    return {"/" + str(name) + k[len(path):]: v for k, v in state.items()
            if k == path or k.startswith(path + "/")}


def _modules_table(module: type[Module], params: Any, state: dict[str, Any], specs: list[Any],
                   args: tuple, kwargs: dict) -> str:
    calls: list[tuple] = []

    def trace(key: jax.Array, params: Any, state: dict[str, Any], *xs: Any) -> Any:
        with _recording(calls), stochastic(key), stateful(Collection(state)):
            return module.call(params, *xs, *args, **kwargs)

    jax.eval_shape(trace, _key(), _abstract(params), state, *specs)
    # Calls come in completion order (children first); show them in call order: a
    # module before its children, siblings in the order they finished.
    finished: dict[str, int] = {}
    rows: dict[str, list[tuple]] = {}  # path -> its calls (a shared module has several)
    for i, call in enumerate(calls):
        finished.setdefault(call[0], i)
        rows.setdefault(call[0], []).append(call)
    order = sorted(rows, key=lambda p: _call_order_key(p, finished))
    notes: dict[str, str] = {}
    cache: dict[str, float | str] = {}
    table_rows = []
    for path in order:
        total: float = 0.0
        failure = None
        for _, cls, name, p, a, k, _ in rows[path]:
            sub_state = _state_of(state, path, name)
            key = repr((cls, name, p, sub_state, a, k))
            if key not in cache:
                cache[key] = _flops(cls, name, p, sub_state, a, k)
            value = cache[key]
            if isinstance(value, str):
                failure = value
            else:
                total += value
        first = rows[path][0]
        label = "(root)" if path == "/" else path_to_str(path)
        depth = 0 if path == "/" else path.count("/")
        label = "  " * (depth - 1 if depth else 0) + label
        if len(rows[path]) > 1:
            label += f" (x{len(rows[path])})"
        if failure is not None:
            notes[failure] = ("could not be compiled alone (e.g. it reads state or keys "
                              "of its parent); its FLOPs are in its parent's")
            flops = f"- [{failure}]"
        else:
            flops = f"{int(total):,}"
        table_rows.append((label, first[1].__name__, _shape_str(first[6]), flops))
    return _format_modules(table_rows, notes)


def _format_modules(table_rows: list[tuple[str, str, str, str]], notes: dict[str, str]) -> str:
    """The module table: left-aligned columns, FLOPs right-aligned, then the notes."""
    widths = [max(len(h), *(len(r[i]) for r in table_rows)) + 2
              for i, h in enumerate(("module", "class", "output", "FLOPs"))]
    header = (f"{'module':<{widths[0]}}{'class':<{widths[1]}}{'output':<{widths[2]}}"
              f"{'FLOPs':>{widths[3]}}")
    lines = [header, "-" * len(header)]
    for label, cls_name, shape, flops in table_rows:
        lines.append(f"{label:<{widths[0]}}{cls_name:<{widths[1]}}{shape:<{widths[2]}}"
                     f"{flops:>{widths[3]}}")
    lines.append("FLOPs: XLA's count for the forward pass of each module with everything it "
                 "calls (a multiply-add is 2).")
    for failure, note in notes.items():
        lines.append(f"[{failure}]: {note}.")
    return "\n".join(lines)


def _call_order_key(path: str, finished: dict[str, int]) -> tuple:
    """Sorts a path after its ancestors, siblings by when their first call finished."""
    parts = [] if path == "/" else path.strip("/").split("/")
    prefixes = ["/" + "/".join(parts[:i + 1]) for i in range(len(parts))]
    return tuple(finished.get(p, -1) for p in prefixes)
