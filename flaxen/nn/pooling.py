"""Pooling functions: ``pool``, ``avg_pool``, ``max_pool`` (plain functions, no params).

Inputs are ``(batch, window dims..., features)``, or unbatched ``(window dims...,
features)``; the window slides over the middle axes only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flaxen.errors import LayerArgumentError, ShapeError
from flaxen.nn.utils import check_positive, current_label


def pool(inputs: jax.Array, init: Any, reduce_fn: Callable[[Any, Any], Any],
         window_shape: Sequence[int], strides: Sequence[int] | None = None,
         padding: str | Sequence[tuple[int, int]] = "VALID") -> jax.Array:
    """Reduces each window with ``reduce_fn`` (``lax.reduce_window``).

    Not differentiable for an arbitrary ``reduce_fn``; ``lax.add`` and ``lax.max`` are.

    Args:
      inputs: ``(batch, window dims..., features)`` or ``(window dims..., features)``.
      init: the reduction's initial value (e.g. ``0.`` or ``-inf``).
      reduce_fn: binary reduction, e.g. ``lax.add``.
      window_shape: N ints, one per window dim.
      strides: N ints (default ones).
      padding: ``'SAME'``, ``'VALID'`` or N ``(low, high)`` pairs.

    Returns:
      ``(batch, out dims..., features)``, the dtype of ``inputs``.

    Raises:
      ShapeError: wrong rank, or a window larger than the (padded) input with 'VALID'.
    """
    path = current_label()
    inputs = jnp.asarray(inputs)
    window_shape = tuple(window_shape)
    n = len(window_shape)
    check_positive(path, "window_shape", window_shape, n)
    check_positive(path, "strides", strides, n)
    if inputs.ndim not in (n + 1, n + 2):
        raise ShapeError(path, f"pooling input rank for window {window_shape}",
                         f"rank {n + 2} (batch, {n} window dims, features) or {n + 1}",
                         f"rank {inputs.ndim} (shape {inputs.shape})")
    unbatched = inputs.ndim == n + 1
    if unbatched:
        inputs = inputs[None]
    strides = (1,) * n if strides is None else tuple(strides)
    if len(strides) != n:
        raise LayerArgumentError(path, "pooling strides", f"{n} values like window_shape "
                                 f"{window_shape}", strides)
    spatial = inputs.shape[1:-1]
    pads: list[tuple[int, ...]]
    if isinstance(padding, str):
        if padding not in ("SAME", "VALID"):
            raise LayerArgumentError(path, "pooling padding", "'SAME', 'VALID' or pairs",
                                     repr(padding))
        pads = [(0, 0)] * n
        pad_arg: Any = padding
    else:
        pads = [tuple(p) for p in padding]
        if len(pads) != n or any(len(p) != 2 for p in pads):
            raise LayerArgumentError(path, "pooling padding", f"{n} (low, high) pairs "
                                     f"matching window {window_shape}", tuple(pads))
        pad_arg = ((0, 0),) + tuple(pads) + ((0, 0),)
    if padding != "SAME":
        padded = tuple(s + lo + hi for s, (lo, hi) in zip(spatial, pads))
        if any(w > p for w, p in zip(window_shape, padded)):
            raise ShapeError(path, "pooling window larger than the input",
                             f"window {window_shape} <= window dims {padded} of input shape "
                             f"{inputs.shape}", f"window {window_shape}",
                             "Use a smaller window, padding='SAME', or a larger input.")
    dims = (1,) + window_shape + (1,)
    all_strides = (1,) + strides + (1,)
    y = lax.reduce_window(inputs, init, reduce_fn, dims, all_strides, pad_arg)
    return y[0] if unbatched else y


def avg_pool(inputs: jax.Array, window_shape: Sequence[int],
             strides: Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = "VALID") -> jax.Array:
    """Mean over each window; with padding, the padded zeros count in the mean.

    Args and shapes as in ``pool``. Returns the dtype of ``inputs``.
    """
    inputs = jnp.asarray(inputs)
    y = pool(inputs, np.array(0, inputs.dtype), lax.add, window_shape, strides, padding)
    return y / np.array(np.prod(window_shape), y.dtype)


def max_pool(inputs: jax.Array, window_shape: Sequence[int],
             strides: Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = "VALID") -> jax.Array:
    """Maximum over each window (padding counts as ``-inf``). Args and shapes as in ``pool``."""
    inputs = jnp.asarray(inputs)
    if jnp.issubdtype(inputs.dtype, jnp.floating):
        lowest = np.array(-np.inf, inputs.dtype)
    else:
        lowest = np.array(jnp.iinfo(inputs.dtype).min, inputs.dtype)
    return pool(inputs, lowest, lax.max, window_shape, strides, padding)
