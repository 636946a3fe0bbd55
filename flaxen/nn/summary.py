"""A text table of a model's parameters, computed from shapes only.

``nn.summary(CNN, [((1, 28, 28, 1), jnp.float32)])`` traces ``init`` with
``jax.eval_shape``, so it allocates no parameters and runs no FLOPs; a ``Model`` or a
params dict is summarised directly. Rows name each parameter as every flaxen message and
checkpoint does (``traverse_util.path_to_str``): ``params/Conv_0/kernel``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from flaxen.nn.base import Model, Module, Params, _as_spec
from flaxen.traverse_util import path_to_str


def _param_shapes(target: Any, input_specs: Iterable[Any] | None, args: tuple,
                  kwargs: dict) -> Any:
    if isinstance(target, Model):
        return target.params
    if isinstance(target, type) and issubclass(target, Module):
        if input_specs is None:
            raise ValueError(f"summary({target.__name__}) needs input_specs, e.g. "
                             "[((1, 28, 28, 1), jnp.float32)].")
        specs = [_as_spec(s) for s in input_specs]
        # init_with_state, so models with state (BatchNorm) are summarised too.
        return jax.eval_shape(lambda *xs: target.init_with_state(
            jax.random.PRNGKey(0), *xs, *args, **kwargs)[1], *specs)
    if isinstance(target, dict):
        return target
    raise TypeError(f"summary expects a Module class, a Model or a params dict, got "
                    f"{type(target).__name__}.")


def summary(target: type[Module] | Model | Params, input_specs: Iterable[Any] | None = None,
            *args: Any, **kwargs: Any) -> str:
    """Returns a table: one row per parameter, a subtotal per module, and the total.

    Args:
      target: a Module class (then ``input_specs`` is required), a ``Model`` or params.
      input_specs: as for ``Module.init_by_shape``.
      *args, **kwargs: further arguments of ``apply``.

    Returns:
      The table as a string (columns: path, shape, dtype, parameters, bytes). Paths read
      ``params/Conv_0/kernel``; module subtotals are named by the module path
      (``Conv_0``), the root module by its class.
    """
    tree = _param_shapes(target, input_specs, args, kwargs)
    root = _root_name(target)
    rows: list[tuple[str, str, str, int, int]] = []
    per_module: dict[str, tuple[int, int]] = {}
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        path = path_to_str(("params", *key_path))
        shape = tuple(leaf.shape)
        dtype = np.dtype(leaf.dtype)
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        rows.append((path, str(shape), dtype.name, count, nbytes))
        module = _module_of(path, root)
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
        by_module.setdefault(_module_of(row[0], root), []).append(row)
    for module, module_rows in by_module.items():
        for path, shape_str, dtype_name, count, nbytes in module_rows:
            lines.append(
                f"{path:<{width}}{shape_str:<20}{dtype_name:<10}{count:>12,}{nbytes:>14,}")
        lines.append(_subtotal(module, per_module, width))
    lines.append("-" * len(header))
    lines.append(f"{'total':<{width}}{'':<20}{'':<10}{total_count:>12,}{total_bytes:>14,}")
    return "\n".join(lines)


def _root_name(target: Any) -> str:
    if isinstance(target, Model):
        return target.module.__name__
    return target.__name__ if isinstance(target, type) else "(root)"


def _module_of(param_path: str, root: str) -> str:
    """``params/Conv_0/kernel`` -> ``Conv_0``; a parameter of the root module -> ``root``."""
    module = param_path.split("/", 1)[1].rpartition("/")[0]
    return module or root


def _subtotal(module: str, per_module: dict[str, tuple[int, int]], width: int) -> str:
    count, nbytes = per_module[module]
    label = f"  {module} (module)"
    return f"{label:<{width}}{'':<20}{'':<10}{count:>12,}{nbytes:>14,}"
