"""Small helpers used by training loops: one-hot labels, metric gathering, stacking.

``shard`` and ``shard_prng_key`` are the pmap-style (legacy) helpers: they add a leading
axis of size ``jax.local_device_count()``. With ``jax.jit`` over a mesh (the flaxen way,
see ``flaxen.parallel``) use ``parallel.shard_batch`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from flaxen.errors import FlaxenError, ShapeError
from flaxen.traverse_util import path_to_str


def onehot(labels: ArrayLike, num_classes: int, on_value: float = 1.0,
           off_value: float = 0.0, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """One-hot encodes integer labels.

    Args:
      labels: integer array of any shape ``[...]``; values outside ``[0, num_classes)``
        give an all-``off_value`` row.
      num_classes: number of classes ``C``.
      on_value: value at the label's position.
      off_value: value elsewhere.
      dtype: dtype of the result (float32 by default).

    Returns:
      Array of shape ``[..., C]`` and dtype ``dtype``.

    Example:
      >>> onehot(jnp.array([0, 2]), 3).tolist()
      [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer) or (
            num_classes < 1):
        raise ShapeError("onehot", "num_classes", "an int >= 1", repr(num_classes))
    labels = jnp.asarray(labels)
    classes = jnp.arange(num_classes, dtype=labels.dtype).reshape((1,) * labels.ndim + (-1,))
    hit = labels[..., None] == classes
    return jnp.where(hit, jnp.asarray(on_value, dtype), jnp.asarray(off_value, dtype))


def shard(xs: Any) -> Any:
    """Reshapes every leaf from ``[B, ...]`` to ``[n, B // n, ...]``, n = local devices.

    Legacy, for pmap-style code. With ``jax.jit`` over a mesh use
    ``flaxen.parallel.shard_batch``.

    Raises:
      ShapeError: a leaf is a scalar or ``B`` is not divisible by ``n``.
    """
    n = jax.local_device_count()

    def one(path: Any, x: Any) -> Any:
        shape = np.shape(x)
        if not shape or shape[0] % n:
            raise ShapeError(
                f"common_utils.shard (batch leaf {path_to_str(path) or '<root>'})",
                "leading (batch) dimension",
                f"a multiple of the {n} local devices", shape[0] if shape else "a scalar",
                "Drop or pad the last partial batch.")
        return x.reshape((n, shape[0] // n) + shape[1:])

    return jax.tree_util.tree_map_with_path(one, xs)


def shard_prng_key(prng_key: jax.Array) -> jax.Array:
    """``jax.random.split(prng_key, jax.local_device_count())``: one key per device (legacy)."""
    return jax.random.split(prng_key, num=jax.local_device_count())


def stack_forest(forest: Sequence[Any]) -> Any:
    """Stacks identically structured pytrees leaf-wise along a new leading axis (numpy).

    Args:
      forest: a non-empty sequence of pytrees with the same structure; leaves of shape
        ``[...]``.

    Returns:
      One pytree whose leaves are numpy arrays ``[len(forest), ...]``.
    """
    forest = list(forest)
    if not forest:
        raise FlaxenError("stack_forest needs at least one pytree, got an empty sequence.")
    structure = jax.tree.structure(forest[0])
    for i, tree in enumerate(forest[1:], 1):
        if jax.tree.structure(tree) != structure:  # type: ignore[operator]
            raise FlaxenError(
                f"stack_forest: tree {i} has structure {jax.tree.structure(tree)}, but tree 0 "
                f"has {structure}. All trees must have the same structure.")
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *forest)


def _is_pmapped(x: Any) -> bool:
    """Whether ``x`` is laid out as a ``jax.pmap`` output: row i of axis 0 on device i."""
    from flaxen.jax_utils import is_stacked

    return is_stacked(x)


def get_metrics(device_metrics: Sequence[Any], unreplicate: bool | None = None) -> Any:
    """Fetches a list of per-step metric pytrees to the host and stacks them over steps.

    Args:
      device_metrics: one metrics pytree per step (scalars or arrays).
      unreplicate: take copy 0 of a leading device axis (pmap-style outputs). None (the
        default) does so for device arrays laid out as ``jax.pmap`` returns them (axis 0
        of size n split over n devices, one row each); metrics of a ``jax.jit`` step
        (scalars, possibly replicated over a mesh) are taken as they are. Pass a bool to
        decide explicitly.

    Returns:
      A pytree of numpy arrays ``[num_steps, ...]``.
    """
    def first(x: Any) -> Any:
        take = _is_pmapped(x) if unreplicate is None else unreplicate
        return x[0] if take else x

    host = jax.device_get([jax.tree.map(first, m) for m in device_metrics])
    return stack_forest(host)
