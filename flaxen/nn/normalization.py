"""Normalisation layers: ``BatchNorm``, ``LayerNorm``, ``GroupNorm``, ``RMSNorm``.

Statistics are computed in float32 (or wider, if the input is wider) whatever ``dtype``
is; the output is cast to ``dtype``. Params ``scale`` and ``bias`` are stored as
``param_dtype``.

BatchNorm keeps its running statistics as module state (``self.state``): ``mean`` and
``var`` in the active state collection. The rule is simple: BatchNorm always needs a
state collection (or an explicit ``batch_stats`` Collection). Create it with
``out, params, state = Model.init_with_state(rng, x)`` and train with
``out, state = model.call_with_state(state, x)``; evaluate with
``model.call_with_state(state, x, use_running_average=True, _mutable=False)`` (or any
flag of your model that sets ``use_running_average=True``). Without a collection the
layer raises ``MissingStateError`` naming its path and this fix.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flaxen.errors import LayerArgumentError, ShapeError, StateEntryMissingError
from flaxen.nn import initializers
from flaxen.nn.base import Module
from flaxen.nn.initializers import InitFn
from flaxen.nn.utils import as_tuple, check_number, param_for_input


def _stats_dtype(x: jax.Array) -> Any:
    return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


def _scale_and_shift(module: Module, y: jax.Array, shape: tuple[int, ...],
                     bcast: tuple[int, ...], input_shape: tuple[int, ...], scale: bool,
                     bias: bool, scale_init: InitFn, bias_init: InitFn,
                     param_dtype: Any) -> jax.Array:
    """Multiplies by the ``scale`` param and adds ``bias`` (both of ``shape``)."""
    if scale:
        s = param_for_input(module, "scale", shape, scale_init, input_shape, param_dtype)
        y = y * jnp.asarray(s).astype(y.dtype).reshape(bcast)
    if bias:
        b = param_for_input(module, "bias", shape, bias_init, input_shape, param_dtype)
        y = y + jnp.asarray(b).astype(y.dtype).reshape(bcast)
    return y


def _cast(v: Any, dtype: Any) -> jax.Array:
    """``v`` as an array of ``dtype``; emits nothing when it already is one."""
    if not isinstance(v, jax.Array):
        v = jnp.asarray(v)
    return v if v.dtype == dtype else lax.convert_element_type(v, dtype)


def _static_number(v: Any) -> float | None:
    """A Python/NumPy number as a float (a static jit argument); None for an array."""
    if isinstance(v, int | float | np.number) and not isinstance(v, bool):
        return float(v)
    return None


def _hashable(axis_name: Any) -> Any:
    """A list of axis names as a tuple (a static jit argument must be hashable)."""
    return tuple(axis_name) if isinstance(axis_name, list) else axis_name


@functools.partial(jax.jit, inline=True, static_argnames=(
    "train", "update", "red_axes", "bcast", "momentum", "epsilon", "axis_name",
    "axis_index_groups", "out_dtype"))
def _batch_norm(x: jax.Array, scale: Any, bias: Any, ra_mean: Any, ra_var: Any,
                momentum_array: Any, epsilon_array: Any, *, train: bool, update: bool,
                red_axes: tuple[int, ...], bcast: tuple[int, ...], momentum: float | None,
                epsilon: float | None, axis_name: Any, axis_index_groups: Any,
                out_dtype: Any) -> tuple[jax.Array, Any, Any]:
    """BatchNorm's arithmetic: ``(y, new running mean, new running var)`` (None, None
    unless ``update``). ``momentum``/``epsilon`` are static floats, or None when they
    come as (traced) arrays in ``momentum_array``/``epsilon_array``."""
    sdt = _stats_dtype(x)
    xs = _cast(x, sdt)
    new_mean = new_var = None
    if train:
        n = float(math.prod(x.shape[i] for i in red_axes))
        mean = lax.div(lax.reduce_sum(xs, red_axes), n)
        mean2 = lax.div(lax.reduce_sum(lax.square(xs), red_axes), n)
        if axis_name is not None:  # one collective for both statistics
            both = lax.pmean(jnp.stack([mean, mean2]), axis_name,
                             axis_index_groups=axis_index_groups)
            mean, mean2 = both[0], both[1]
        var = lax.sub(mean2, lax.square(mean))
        # Clamp rounding below zero without differentiating max (its JVP alone is ten
        # equations): var + (max(v, 0) - v), v a gradient-free copy of var.
        v = lax.stop_gradient(var)
        var = lax.add(var, lax.sub(lax.max(v, 0.0), v))
        if update:
            m = momentum if momentum is not None else _cast(momentum_array, jnp.float32)
            rest = 1.0 - m if isinstance(m, float) else lax.sub(1.0, m)
            new_mean = lax.add(lax.mul(_cast(ra_mean, jnp.float32), m),
                               lax.mul(_cast(mean, jnp.float32), rest))
            new_var = lax.add(lax.mul(_cast(ra_var, jnp.float32), m),
                              lax.mul(_cast(var, jnp.float32), rest))
    else:
        mean, var = _cast(ra_mean, sdt), _cast(ra_var, sdt)
    eps = epsilon if epsilon is not None else _cast(epsilon_array, sdt)
    mul = lax.rsqrt(lax.add(var, eps))
    if scale is not None:
        mul = lax.mul(mul, _cast(scale, sdt))
    shift = lax.mul(mean, mul)
    shift = lax.neg(shift) if bias is None else lax.sub(_cast(bias, sdt), shift)
    y = lax.add(lax.mul(xs, lax.reshape(mul, bcast)), lax.reshape(shift, bcast))
    return _cast(y, out_dtype), new_mean, new_var


class BatchNorm(Module):
    """Normalises over all axes but the feature ``axis``, with running statistics.

    Why the computation is laid out as it is: BatchNorm is most of a ResNet's trace
    time, so its arithmetic is one inlined ``jax.jit`` function of ``lax`` primitives
    (traced and linearised once per shape and configuration, then reused by every layer
    of that shape), reads the batch once for the mean and the mean of squares, folds
    scale and inverse std into one per-feature multiplier and shift (one full-size
    multiply and add, one saved tensor for the backward pass), and casts only where
    dtypes differ.
    """

    def apply(self, x: jax.Array, batch_stats: Any = None, use_running_average: bool = False,
              axis: int | Sequence[int] = -1, momentum: float = 0.99, epsilon: float = 1e-5,
              dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, bias: bool = True,
              scale: bool = True, bias_init: InitFn = initializers.zeros,
              scale_init: InitFn = initializers.ones, axis_name: Any = None,
              axis_index_groups: Any = None) -> jax.Array:
        """Batch normalisation.

        Training (``use_running_average=False``): normalise with the batch mean and
        variance (``E[x^2] - E[x]^2``, clamped at 0 against rounding; the clamp does not
        enter the gradient), and update the state
        ``ra = momentum * ra + (1 - momentum) * batch_value`` for ``mean`` and ``var``
        (not at init, where they stay zeros and ones). Evaluation: normalise with the
        stored ``mean``/``var`` and write nothing.

        Args:
          x: array of any rank >= 1.
          batch_stats: an explicit state Collection; default: the active ``nn.stateful``
            one (``init_with_state``/``call_with_state`` open it).
          use_running_average: evaluation mode.
          axis: feature axis or axes (int or tuple); statistics reduce over the others.
          momentum: decay of the running averages.
          epsilon: added to the variance.
          dtype: output dtype. param_dtype: storage dtype of ``scale``/``bias``.
          bias, scale: whether to learn ``bias`` / ``scale`` (shape: the feature dims).
          axis_name: a mapped axis name (``vmap``/``shard_map``/``pmap``); the batch
            mean and mean of squares are ``lax.pmean``-ed over it, so every device uses
            the statistics of the whole global batch.
          axis_index_groups: passed to ``lax.pmean``.

        Returns:
          Array of the shape of ``x`` and dtype ``dtype``.
          State (at this module's path): ``mean`` and ``var`` of the feature shape, f32.

        Raises:
          MissingStateError: no state collection is active (see the module docstring).
        """
        if not isinstance(x, jax.Array):
            x = jnp.asarray(x)
        path = self.label
        if x.ndim < 1:
            raise ShapeError(path, "input rank", "rank >= 1", f"shape {x.shape}")
        check_number(path, "momentum", momentum, 0.0, 1.0, "a number in [0, 1]")
        check_number(path, "epsilon", epsilon, 0.0, float("inf"), "a number >= 0")
        for a in as_tuple(axis):
            if not isinstance(a, int) or not -x.ndim <= a < x.ndim:
                raise LayerArgumentError(path, "axis", f"feature axes of a rank-{x.ndim} "
                                         f"input (ints in [{-x.ndim}, {x.ndim}))", repr(axis))
        feat_axes = tuple(sorted(a % x.ndim for a in as_tuple(axis)))
        red_axes = tuple(i for i in range(x.ndim) if i not in feat_axes)
        feat_shape = tuple(x.shape[a] for a in feat_axes)
        bcast = tuple(x.shape[i] if i in feat_axes else 1 for i in range(x.ndim))
        initializing = self.is_initializing()
        if use_running_average and not initializing:
            ra_mean = self.state("mean", collection=batch_stats)
            ra_var = self.state("var", collection=batch_stats)
            if not (ra_mean.exists() and ra_var.exists()):
                raise StateEntryMissingError(
                    path, 'its running statistics ("mean", "var") for evaluation '
                    "(use_running_average=True)", list(ra_mean.collection.as_dict()))
        else:
            ra_mean = self.state("mean", feat_shape, initializers.zeros, collection=batch_stats)
            ra_var = self.state("var", feat_shape, initializers.ones, collection=batch_stats)
        old_mean, old_var = ra_mean.value, ra_var.value
        train = not use_running_average
        update = train and not initializing
        for stored in (old_mean, old_var) if update or not train else ():
            if tuple(jnp.shape(stored)) != feat_shape:
                raise ShapeError(path, "stored BatchNorm statistics", f"shape {feat_shape} "
                                 f"for input shape {x.shape}", f"shape {jnp.shape(stored)}")
        s = b = None
        if scale:
            s = param_for_input(self, "scale", feat_shape, scale_init, x.shape, param_dtype)
        if bias:
            b = param_for_input(self, "bias", feat_shape, bias_init, x.shape, param_dtype)
        static_m, static_eps = _static_number(momentum), _static_number(epsilon)
        groups = (None if axis_index_groups is None
                  else tuple(tuple(int(i) for i in g) for g in axis_index_groups))
        if train and not update:
            old_mean = old_var = None  # batch statistics only: nothing to read
        y, new_mean, new_var = _batch_norm(
            x, s, b, old_mean, old_var, momentum if static_m is None else None,
            epsilon if static_eps is None else None, train=train, update=update,
            red_axes=red_axes, bcast=bcast, momentum=static_m, epsilon=static_eps,
            axis_name=None if initializing else _hashable(axis_name), axis_index_groups=groups,
            out_dtype=None if dtype is None else jnp.dtype(dtype))
        if update:
            ra_mean.value, ra_var.value = new_mean, new_var
        return y


class LayerNorm(Module):
    """Normalises each example over its last axis."""

    def apply(self, x: jax.Array, epsilon: float = 1e-6, dtype: Any = jnp.float32,
              param_dtype: Any = jnp.float32, bias: bool = True, scale: bool = True,
              bias_init: InitFn = initializers.zeros,
              scale_init: InitFn = initializers.ones) -> jax.Array:
        """``(x - mean) / sqrt(var + epsilon) * scale + bias`` over the last axis.

        Args:
          x: array of shape ``(..., features)``.
          epsilon, dtype, param_dtype, bias, scale, bias_init, scale_init: as in
            ``BatchNorm``.

        Returns:
          Array of the shape of ``x``, dtype ``dtype``. Params ``scale``, ``bias``:
          ``(features,)``.
        """
        x = jnp.asarray(x)
        if x.ndim < 1:
            raise ShapeError(self.label, "input rank", "rank >= 1", f"shape {x.shape}")
        xs = x.astype(_stats_dtype(x))
        mean = jnp.mean(xs, axis=-1, keepdims=True)
        mean2 = jnp.mean(lax.square(xs), axis=-1, keepdims=True)
        var = jnp.maximum(mean2 - lax.square(mean), jnp.zeros((), mean.dtype))
        check_number(self.label, "epsilon", epsilon, 0.0, float("inf"), "a number >= 0")
        y = (xs - mean) * lax.rsqrt(var + jnp.asarray(epsilon, xs.dtype))
        feat = (x.shape[-1],)
        bcast = (1,) * (x.ndim - 1) + feat
        y = _scale_and_shift(self, y, feat, bcast, x.shape, scale, bias, scale_init,
                             bias_init, param_dtype)
        return y.astype(dtype)


class RMSNorm(Module):
    """Scales each example by the reciprocal root mean square of its last axis."""

    def apply(self, x: jax.Array, epsilon: float = 1e-6, dtype: Any = jnp.float32,
              param_dtype: Any = jnp.float32, scale: bool = True,
              scale_init: InitFn = initializers.ones) -> jax.Array:
        """``x / sqrt(mean(x^2) + epsilon) * scale`` over the last axis (no centring).

        Args:
          x: array of shape ``(..., features)``.
          epsilon, dtype, param_dtype, scale, scale_init: as in ``LayerNorm``.

        Returns:
          Array of the shape of ``x``, dtype ``dtype``. Param ``scale``: ``(features,)``.
        """
        x = jnp.asarray(x)
        if x.ndim < 1:
            raise ShapeError(self.label, "input rank", "rank >= 1", f"shape {x.shape}")
        xs = x.astype(_stats_dtype(x))
        ms = jnp.mean(lax.square(xs), axis=-1, keepdims=True)
        check_number(self.label, "epsilon", epsilon, 0.0, float("inf"), "a number >= 0")
        y = xs * lax.rsqrt(ms + jnp.asarray(epsilon, xs.dtype))
        feat = (x.shape[-1],)
        bcast = (1,) * (x.ndim - 1) + feat
        y = _scale_and_shift(self, y, feat, bcast, x.shape, scale, False, scale_init,
                             initializers.zeros, param_dtype)
        return y.astype(dtype)


class GroupNorm(Module):
    """Normalises each example over its spatial axes and groups of channels."""

    def apply(self, x: jax.Array, num_groups: int | None = 32, group_size: int | None = None,
              epsilon: float = 1e-6, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
              bias: bool = True, scale: bool = True, bias_init: InitFn = initializers.zeros,
              scale_init: InitFn = initializers.ones) -> jax.Array:
        """Group normalisation (Wu & He, 2018).

        Args:
          x: ``(batch, spatial..., channels)``, rank >= 2.
          num_groups: number of channel groups G (channels must be divisible by G).
          group_size: alternatively, channels per group; exactly one of the two is set.
          epsilon, dtype, param_dtype, bias, scale, bias_init, scale_init: as in
            ``LayerNorm``.

        Returns:
          Array of the shape of ``x``, dtype ``dtype``. Params ``scale``, ``bias``:
          ``(channels,)`` (the pre-release stored ``(1, ..., 1, channels)``).

        Raises:
          LayerArgumentError: both or neither of ``num_groups``/``group_size``, or the
            channels are not divisible.
        """
        x = jnp.asarray(x)
        path = self.label
        if x.ndim < 2:
            raise ShapeError(path, "input rank", "rank >= 2 (batch, ..., channels)",
                             f"rank {x.ndim} (shape {x.shape})")
        if (num_groups is None) == (group_size is None):
            raise LayerArgumentError(path, "num_groups / group_size", "exactly one of them "
                                     "set", f"num_groups={num_groups}, group_size={group_size}",
                                     "Pass num_groups=None when giving group_size.")
        c = x.shape[-1]
        groups = num_groups if num_groups is not None else c // max(int(group_size or 1), 1)
        if groups < 1 or c % groups or (group_size is not None and c % group_size):
            raise LayerArgumentError(path, "channel grouping", f"channels ({c}) divisible "
                                     "into equal groups", f"num_groups={num_groups}, "
                                     f"group_size={group_size}")
        xs = x.astype(_stats_dtype(x))
        g = xs.reshape(x.shape[:-1] + (groups, c // groups))
        red = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)
        mean = jnp.mean(g, axis=red, keepdims=True)
        mean2 = jnp.mean(lax.square(g), axis=red, keepdims=True)
        var = jnp.maximum(mean2 - lax.square(mean), jnp.zeros((), mean.dtype))
        check_number(self.label, "epsilon", epsilon, 0.0, float("inf"), "a number >= 0")
        y = ((g - mean) * lax.rsqrt(var + jnp.asarray(epsilon, xs.dtype))).reshape(x.shape)
        bcast = (1,) * (x.ndim - 1) + (c,)
        y = _scale_and_shift(self, y, (c,), bcast, x.shape, scale, bias, scale_init,
                             bias_init, param_dtype)
        return y.astype(dtype)
