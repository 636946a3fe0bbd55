"""Linear layers: ``Dense``, ``DenseGeneral`` and ``Embed``.

Every layer takes ``dtype`` (the computation dtype: inputs and params are cast to it) and
``param_dtype`` (the storage dtype of its params). Parameter names: ``kernel``, ``bias``,
``embedding``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flaxen.errors import LayerArgumentError, ShapeError
from flaxen.nn import initializers
from flaxen.nn.base import Module, module_method
from flaxen.nn.initializers import InitFn, call_init
from flaxen.nn.utils import as_tuple, check_features, check_rank, param_for_input

default_kernel_init = initializers.lecun_normal()
default_embed_init = initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)


class Dense(Module):
    """A fully connected layer: ``y = x @ kernel + bias`` over the last axis."""

    def apply(self, inputs: jax.Array, features: int, bias: bool = True,
              dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
              precision: Any = None, kernel_init: InitFn = default_kernel_init,
              bias_init: InitFn = initializers.zeros) -> jax.Array:
        """Applies a linear transformation to the last axis of ``inputs``.

        Args:
          inputs: array of shape ``(..., in_features)``, rank >= 1.
          features: the number of output features.
          bias: whether to add a bias.
          dtype: computation dtype (inputs and params are cast to it).
          param_dtype: storage dtype of ``kernel`` and ``bias``.
          precision: ``lax.Precision`` of the matmul.
          kernel_init: initializer of ``kernel`` of shape ``(in_features, features)``.
          bias_init: initializer of ``bias`` of shape ``(features,)``.

        Returns:
          Array of shape ``(..., features)`` and dtype ``dtype``.

        Raises:
          LayerArgumentError: ``features`` is not a positive int.
        """
        inputs = jnp.asarray(inputs)
        (features,) = check_features(self.label, "features", features)
        if inputs.ndim < 1:
            raise ShapeError(self.label, "input rank", "rank >= 1", f"shape {inputs.shape}")
        shape = (inputs.shape[-1], features)
        kernel = param_for_input(self, "kernel", shape, kernel_init, inputs.shape, param_dtype)
        y = lax.dot_general(inputs.astype(dtype), jnp.asarray(kernel).astype(dtype),
                            (((inputs.ndim - 1,), (0,)), ((), ())), precision=precision)
        if bias:
            b = self.param("bias", (features,), bias_init, param_dtype)
            b = jnp.asarray(b).astype(dtype)
            y = y + b.reshape((1,) * (y.ndim - 1) + (features,))
        return y.astype(dtype)


def _normalize_axes(axes: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return tuple(a % ndim for a in axes)


class DenseGeneral(Module):
    """A linear transformation over several input axes, to one or several output axes."""

    def apply(self, inputs: jax.Array, features: int | Sequence[int],
              axis: int | Sequence[int] = -1, batch_dims: int | Sequence[int] = (),
              bias: bool = True, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
              kernel_init: InitFn = default_kernel_init,
              bias_init: InitFn = initializers.zeros, precision: Any = None) -> jax.Array:
        """Contracts ``inputs`` over ``axis`` with a kernel, keeping ``batch_dims`` paired.

        Args:
          inputs: array of any rank.
          features: an int or tuple: the output feature shape ``F``.
          axis: int or tuple: the input axes to contract (negative allowed).
          batch_dims: int or tuple: leading axes ``0..k-1`` that get their own kernel slice.
          bias, dtype, param_dtype, kernel_init, bias_init, precision: as in ``Dense``.
            The kernel is initialised as if it were a Dense kernel of shape
            ``(prod(contracted dims), prod(F))`` per batch index.

        Returns:
          Array of shape ``batch dims + remaining input dims + F`` and dtype ``dtype``.
          Params: ``kernel`` of shape ``batch + contracted dims + F``, ``bias`` of shape
          ``batch + F``.

        Raises:
          LayerArgumentError: ``features`` is not positive ints, ``batch_dims`` are not the
            leading axes, or axes overlap.
        """
        inputs = jnp.asarray(inputs)
        path = self.label
        features_t = check_features(path, "features", features)
        ndim = inputs.ndim
        for a in as_tuple(axis) + as_tuple(batch_dims):
            if not -ndim <= a < ndim:
                raise ShapeError(path, f"axis {a} of the input", f"an axis of a rank-{ndim} "
                                 "input", f"shape {inputs.shape}")
        axis_t = _normalize_axes(as_tuple(axis), ndim)
        batch_t = _normalize_axes(as_tuple(batch_dims), ndim)
        if batch_t != tuple(range(len(batch_t))):
            raise LayerArgumentError(path, "batch_dims", "consecutive leading dimensions "
                                     "starting from 0", batch_t)
        if set(axis_t) & set(batch_t):
            raise LayerArgumentError(path, "axis and batch_dims", "disjoint axes",
                                     f"axis={axis_t}, batch_dims={batch_t}")
        batch_shape = tuple(inputs.shape[a] for a in batch_t)
        contract_shape = tuple(inputs.shape[a] for a in axis_t)
        n_batch = int(np.prod(batch_shape))
        flat_in = int(np.prod(contract_shape))
        flat_out = int(np.prod(features_t))

        def per_batch(init: InitFn, flat_shape: tuple[int, ...]) -> InitFn:
            """``init`` for one flat ``flat_shape`` slice per batch index, reshaped."""
            def wrapped(key: jax.Array, shape: Sequence[int], dtype: Any) -> jax.Array:
                keys = jax.random.split(key, n_batch)
                slices = jax.vmap(lambda k: call_init(init, k, flat_shape, dtype))(keys)
                return slices.reshape(shape)
            return wrapped

        kernel_init_wrap = per_batch(kernel_init, (flat_in, flat_out))
        bias_init_wrap = per_batch(bias_init, (flat_out,))
        kernel_shape = batch_shape + contract_shape + features_t
        kernel = param_for_input(self, "kernel", kernel_shape, kernel_init_wrap, inputs.shape,
                                 param_dtype)
        nb = len(batch_t)
        kernel_contract = tuple(range(nb, nb + len(axis_t)))
        dims = ((axis_t, kernel_contract), (batch_t, tuple(range(nb))))
        y = lax.dot_general(inputs.astype(dtype), jnp.asarray(kernel).astype(dtype), dims,
                            precision=precision)
        if bias:
            b = self.param("bias", batch_shape + features_t, bias_init_wrap, param_dtype)
            b = jnp.asarray(b).astype(dtype)
            n_rest = ndim - nb - len(axis_t)
            b = b.reshape(batch_shape + (1,) * n_rest + features_t)
            y = y + b
        return y.astype(dtype)


_INT_DTYPES = (jnp.int8, jnp.int16, jnp.int32, jnp.int64, jnp.uint8, jnp.uint16, jnp.uint32,
               jnp.uint64)


class Embed(Module):
    """A lookup table of ``num_embeddings`` vectors of size ``features``."""

    def apply(self, inputs: jax.Array, num_embeddings: int, features: int,
              dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
              embedding_init: InitFn = default_embed_init) -> jax.Array:
        """Looks up ``embedding[inputs]``.

        Args:
          inputs: integer array of any shape, values in ``[0, num_embeddings)``. An id
            ``>= num_embeddings`` gives a row of NaNs (so the bug shows; a check on
            values cannot run under jit); negative ids count from the end.
          num_embeddings: the vocabulary size.
          features: the embedding size.
          dtype: dtype of the output.
          param_dtype: storage dtype of ``embedding``.
          embedding_init: initializer of ``embedding`` of shape ``(num_embeddings,
            features)``; default normal with stddev ``1/sqrt(features)``.

        Returns:
          Array of shape ``inputs.shape + (features,)`` and dtype ``dtype``.

        Raises:
          LayerArgumentError: ``inputs`` is not of an integer dtype.
        """
        inputs = jnp.asarray(inputs)
        check_features(self.label, "num_embeddings", num_embeddings)
        check_features(self.label, "features", features)
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise LayerArgumentError(self.label, "input dtype", "an integer dtype (token ids)",
                                     inputs.dtype, "Cast the ids with `.astype(jnp.int32)`.")
        embedding = self.param("embedding", (num_embeddings, features), embedding_init,
                               param_dtype)
        return jnp.take(jnp.asarray(embedding), inputs, axis=0).astype(dtype)

    @module_method
    def attend(self, query: jax.Array, num_embeddings: int, features: int,
               dtype: Any = jnp.float32, **unused_kwargs: Any) -> jax.Array:
        """Tied output projection: ``query @ embedding.T``.

        Args:
          query: array of shape ``(..., features)``.
          num_embeddings, features: as for the lookup (same params).
          dtype: computation dtype.

        Returns:
          Logits of shape ``(..., num_embeddings)`` and dtype ``dtype``.
        """
        query = jnp.asarray(query)
        check_rank(self.label, query, range(1, 33), "query rank")
        embedding = self.param("embedding", (num_embeddings, features), default_embed_init)
        if query.shape[-1] != features:
            raise ShapeError(self.label, "last axis of the query", f"size {features} "
                             f"(embedding {(num_embeddings, features)})",
                             f"query shape {query.shape}")
        return lax.dot_general(query.astype(dtype), jnp.asarray(embedding).astype(dtype),
                               (((query.ndim - 1,), (1,)), ((), ())))
