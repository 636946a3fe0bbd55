"""Attention masks: ``make_attention_mask``, ``make_causal_mask``, ``make_padding_mask``.

Each returns a mask with the layout of the attention logits, ``(batch, 1, q dims...,
k dims...)`` (the 1 broadcasts over heads); True (or nonzero) = may attend. Pass it as
``mask=`` to ``dot_product_attention`` or ``MultiHeadDotProductAttention``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from flaxen.errors import ShapeError
from flaxen.nn.utils import current_label


def make_attention_mask(query_input: jax.Array, key_input: jax.Array,
                        pairwise_fn: Callable[[Any, Any], Any] = jnp.multiply,
                        dtype: Any = jnp.bool_) -> jax.Array:
    """A ``(batch, 1, q_len, k_len)`` mask from per-position values.

    Args:
      query_input: ``(batch, q_len)`` (e.g. 1 for real tokens, 0 for padding, or
        segment ids with ``pairwise_fn=jnp.equal``).
      key_input: ``(batch, k_len)``.
      pairwise_fn: combines a query value and a key value; nonzero/True = attend.
      dtype: of the result (bool by default).
    """
    qi, ki = jnp.asarray(query_input), jnp.asarray(key_input)
    if qi.ndim != 2 or ki.ndim != 2 or qi.shape[0] != ki.shape[0]:
        raise ShapeError(current_label(), "make_attention_mask inputs", "(batch, q_len) and "
                         "(batch, k_len) with the same batch", f"{qi.shape} and {ki.shape}")
    m = pairwise_fn(qi[:, :, None], ki[:, None, :])
    return m[:, None].astype(dtype)


def make_causal_mask(x: jax.Array, dtype: Any = jnp.bool_) -> jax.Array:
    """A ``(batch, 1, len, len)`` mask letting position i attend to positions j <= i.

    Args:
      x: ``(batch, len)`` (only the shape is used).
      dtype: of the result (bool by default).
    """
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ShapeError(current_label(), "make_causal_mask input", "shape (batch, len)",
                         f"shape {x.shape}")
    idx = jnp.arange(x.shape[1], dtype=jnp.int32)
    m = make_attention_mask(jnp.broadcast_to(idx, x.shape), jnp.broadcast_to(idx, x.shape),
                            jnp.greater_equal)
    return m.astype(dtype)


def make_padding_mask(padding_mask_query: jax.Array, padding_mask_key: jax.Array | None = None,
                      dtype: Any = jnp.float32, segmentation_mask: bool = False) -> jax.Array:
    """The pre-release padding mask: ``(batch, 1, q dims..., k dims...)``.

    Args:
      padding_mask_query: ``(batch, q dims...)``, nonzero for real positions (a trailing
        axis of size 1, as the pre-release examples passed, is dropped). With
        ``segmentation_mask=True``, segment ids instead.
      padding_mask_key: ``(batch, k dims...)``; defaults to the query's.
      dtype: of the result (float32, as in the pre-release).
      segmentation_mask: attend only where segment ids are equal.
    """
    q = jnp.asarray(padding_mask_query)
    k = q if padding_mask_key is None else jnp.asarray(padding_mask_key)
    if q.ndim > 2 and q.shape[-1] == 1:
        q = q[..., 0]
    if k.ndim > 2 and k.shape[-1] == 1:
        k = k[..., 0]
    if q.shape[0] != k.shape[0] or q.ndim < 2 or k.ndim < 2:
        raise ShapeError(current_label(), "padding masks", "(batch, dims...) with the same batch",
                         f"query mask {q.shape}, key mask {k.shape}")
    qf = q.reshape(q.shape[0], -1)
    kf = k.reshape(k.shape[0], -1)
    fn = jnp.equal if segmentation_mask else (lambda a, b: a.astype(bool) & b.astype(bool))
    m = make_attention_mask(qf, kf, fn, jnp.bool_)
    return m.reshape((q.shape[0], 1) + q.shape[1:] + k.shape[1:]).astype(dtype)

