"""Convolutions: ``Conv`` (1-D/2-D/3-D, dilated, grouped, depthwise) and ``ConvTranspose``.

Layout is channels-last: inputs ``(batch, spatial..., in_features)``, kernels
``spatial... + (in_features // groups, features)`` (HWIO). A single unbatched input
``(spatial..., in_features)`` is accepted and gives an unbatched output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from flaxen.errors import LayerArgumentError, ShapeError
from flaxen.nn import initializers
from flaxen.nn.base import Module
from flaxen.nn.initializers import InitFn
from flaxen.nn.linear import default_kernel_init
from flaxen.nn.utils import as_tuple, check_features, check_positive, param_for_input

Padding = str | Sequence[tuple[int, int]]


def _dimension_numbers(n: int) -> lax.ConvDimensionNumbers:
    lhs = (0, n + 1) + tuple(range(1, n + 1))  # N, C, spatial...
    rhs = (n + 1, n) + tuple(range(n))  # O, I, spatial...
    return lax.ConvDimensionNumbers(lhs, rhs, lhs)


def _prepare(module: Module, inputs: Any, features: Any, kernel_size: Sequence[int],
             strides: Any, padding: Padding) -> tuple[jax.Array, bool, tuple, tuple, Padding]:
    """Checks the input rank and the arguments; adds a batch axis to an unbatched input."""
    path = module.label
    inputs = jnp.asarray(inputs)
    check_features(path, "features", features)
    kernel_size = as_tuple(kernel_size)
    n = len(kernel_size)
    if n < 1 or any(not isinstance(k, int) or k < 1 for k in kernel_size):
        raise LayerArgumentError(path, "kernel_size", "a tuple of positive ints", kernel_size)
    if inputs.ndim == n + 1:
        inputs, unbatched = inputs[None], True
    elif inputs.ndim == n + 2:
        unbatched = False
    else:
        raise ShapeError(path, f"input rank for a {n}-D kernel {kernel_size}",
                         f"rank {n + 2} (batch, {n} spatial, features) or {n + 1} (unbatched)",
                         f"rank {inputs.ndim} (shape {inputs.shape})",
                         "Inputs are channels-last: (batch, spatial..., features).")
    strides = check_positive(path, "strides", strides, n) or (1,) * n
    if not isinstance(padding, str):
        padding = [(int(p[0]), int(p[1])) if len(p) == 2 else tuple(p) for p in padding]
        if len(padding) != n or any(len(p) != 2 for p in padding):
            raise LayerArgumentError(path, "padding", f"'SAME', 'VALID' or {n} (low, high) "
                                     "pairs", padding)
    elif padding not in ("SAME", "VALID", "SAME_LOWER"):
        raise LayerArgumentError(path, "padding", "'SAME', 'VALID' or (low, high) pairs",
                                 repr(padding))
    return inputs, unbatched, kernel_size, strides, padding


def _kernel(module: Module, shape: tuple, init: InitFn, param_dtype: Any, inputs: jax.Array,
            unbatched: bool) -> Any:
    """The ``kernel`` param; a mismatch names the input shape the user passed and how it
    was read (an unbatched input is read as one example, channels-last)."""
    shown = inputs.shape[1:] if unbatched else inputs.shape
    try:
        return param_for_input(module, "kernel", shape, init, shown, param_dtype)
    except ShapeError as e:
        if not unbatched:
            raise
        n = len(shown) - 1
        raise ShapeError(
            module.label, "the input does not fit the stored kernel of shape "
            f"{tuple(module.get_param('kernel').shape)}",
            f"(batch, {n} spatial, {module.get_param('kernel').shape[-2]} features)",
            f"input shape {tuple(shown)}, read as ONE unbatched example with spatial "
            f"{tuple(shown[:-1])} and {shown[-1]} channels",
            "Inputs are channels-last: add the channel axis, e.g. `x[..., None]` for "
            "(batch, H, W) images.") from e


class Conv(Module):
    """An N-D convolution (N = ``len(kernel_size)``), channels-last."""

    def apply(self, inputs: jax.Array, features: int, kernel_size: Sequence[int],
              strides: Sequence[int] | None = None, padding: Padding = "SAME",
              input_dilation: Sequence[int] | None = None,
              kernel_dilation: Sequence[int] | None = None, feature_group_count: int = 1,
              bias: bool = True, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
              precision: Any = None, kernel_init: InitFn = default_kernel_init,
              bias_init: InitFn = initializers.zeros) -> jax.Array:
        """Convolves ``inputs`` with a learned kernel.

        Args:
          inputs: ``(batch, spatial..., in_features)`` or unbatched
            ``(spatial..., in_features)``.
          features: number of output features.
          kernel_size: tuple of N ints.
          strides: N ints (default ones).
          padding: ``'SAME'``, ``'VALID'`` or N ``(low, high)`` pairs.
          input_dilation: N ints (``lhs_dilation``; a fractionally strided conv).
          kernel_dilation: N ints (``rhs_dilation``; an atrous conv).
          feature_group_count: groups; ``in_features`` and ``features`` must be divisible
            by it. ``feature_group_count == in_features`` is a depthwise convolution.
          bias, dtype, param_dtype, precision, kernel_init, bias_init: as in ``Dense``.

        Returns:
          ``(batch, out spatial..., features)`` (unbatched if the input was), ``dtype``.
          Params: ``kernel`` ``kernel_size + (in_features // groups, features)``,
          ``bias`` ``(features,)``.
        """
        inputs, unbatched, kernel_size, strides, padding = _prepare(
            self, inputs, features, kernel_size, strides, padding)
        n = len(kernel_size)
        in_features = inputs.shape[-1]
        g = feature_group_count
        if g < 1 or in_features % g or features % g:
            raise LayerArgumentError(
                self.label, "feature_group_count", "a positive divisor of both in_features "
                f"({in_features}) and features ({features})", g)
        kernel_shape = kernel_size + (in_features // g, features)
        kernel = _kernel(self, kernel_shape, kernel_init, param_dtype, inputs, unbatched)
        lhs_dil = check_positive(self.label, "input_dilation", input_dilation, n)
        rhs_dil = check_positive(self.label, "kernel_dilation", kernel_dilation, n)
        if lhs_dil is not None and isinstance(padding, str):
            # lax wants explicit pads with input dilation: those of the dilated shapes.
            sp = tuple((s - 1) * d + 1 for s, d in zip(inputs.shape[1:-1], lhs_dil))
            kd = rhs_dil or (1,) * n
            ke = tuple((k - 1) * d + 1 for k, d in zip(kernel_size, kd))
            padding = lax.padtype_to_pads(sp, ke, strides, padding)
        y = lax.conv_general_dilated(
            inputs.astype(dtype), jnp.asarray(kernel).astype(dtype), strides, padding,
            lhs_dilation=lhs_dil, rhs_dilation=rhs_dil,
            dimension_numbers=_dimension_numbers(n), feature_group_count=g,
            precision=precision)
        return _add_bias(self, y, bias, features, bias_init, param_dtype, dtype, unbatched)


class ConvTranspose(Module):
    """An N-D transposed convolution (the gradient of ``Conv`` w.r.t. its input, shape-wise)."""

    def apply(self, inputs: jax.Array, features: int, kernel_size: Sequence[int],
              strides: Sequence[int] | None = None, padding: Padding = "SAME",
              kernel_dilation: Sequence[int] | None = None, bias: bool = True,
              dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
              precision: Any = None, kernel_init: InitFn = default_kernel_init,
              bias_init: InitFn = initializers.zeros) -> jax.Array:
        """Applies ``lax.conv_transpose`` (no kernel flip, as the pre-release Flax did).

        Args:
          inputs: ``(batch, spatial..., in_features)`` or unbatched.
          features: number of output features.
          kernel_size: tuple of N ints.
          strides: N ints (default ones); the output is ``strides`` times larger
            (with ``'SAME'`` padding).
          padding: ``'SAME'``, ``'VALID'`` or N ``(low, high)`` pairs.
          kernel_dilation: N ints.
          bias, dtype, param_dtype, precision, kernel_init, bias_init: as in ``Dense``.

        Returns:
          ``(batch, out spatial..., features)``, ``dtype``. With ``'SAME'`` each out
          spatial size is ``in * stride``; with ``'VALID'`` it is
          ``in * stride + max(k - stride, 0)`` (``k`` the dilated kernel size).
          Params: ``kernel`` ``kernel_size + (in_features, features)``, ``bias``
          ``(features,)``.
        """
        inputs, unbatched, kernel_size, strides, padding = _prepare(
            self, inputs, features, kernel_size, strides, padding)
        n = len(kernel_size)
        kernel_shape = kernel_size + (inputs.shape[-1], features)
        kernel = _kernel(self, kernel_shape, kernel_init, param_dtype, inputs, unbatched)
        rhs_dil = check_positive(self.label, "kernel_dilation", kernel_dilation, n)
        dn = _dimension_numbers(n)
        y = lax.conv_transpose(
            inputs.astype(dtype), jnp.asarray(kernel).astype(dtype), strides, padding,
            rhs_dilation=rhs_dil,
            dimension_numbers=dn, precision=precision)
        return _add_bias(self, y, bias, features, bias_init, param_dtype, dtype, unbatched)


def _add_bias(module: Module, y: jax.Array, bias: bool, features: int, bias_init: Any,
              param_dtype: Any, dtype: Any, unbatched: bool) -> jax.Array:
    """Adds the ``bias`` param (``(features,)``) if wanted; drops the batch axis added for
    unbatched input. Shared by Conv and ConvTranspose."""
    if bias:
        b = module.param("bias", (features,), bias_init, param_dtype)
        b = jnp.asarray(b).astype(dtype)
        y = y + b.reshape((1,) * (y.ndim - 1) + (features,))
    y = y.astype(dtype)
    return y[0] if unbatched else y
