"""The multi-head attention layers, ``MultiHeadDotProductAttention`` and ``SelfAttention``.

Inputs are ``(batch, d1, ..., dn, features)``; the layers project them to ``num_heads``
heads, attend over some of the ``d`` axes (by default all of them) with
``dot_product_attention`` (``flaxen/nn/attention_fn.py``), and project back. The masks
(``flaxen/nn/attention_masks.py``) and the function are importable from here too, as
``nn.attention.*`` in the pre-release.

Autoregressive decoding (``MultiHeadDotProductAttention(..., decode=True)``) keeps the
projected keys and values in module state, ``cached_key``, ``cached_value`` (``(batch,
max_len, heads, head_dim)``) and ``cache_index`` (int32 scalar). The protocol:

    # 1. Allocate: one call on a full-length (batch, max_len, ...) input creates a zero
    #    cache (and returns ordinary causal attention on that input).
    _, cache = model.call_with_state(None, jnp.zeros((batch, max_len, ...)), decode=True)
    # 2. Step: feed one position at a time, (batch, 1, ...); thread the cache through.
    for t in range(max_len):
        y_t, cache = model.call_with_state(cache, x[:, t:t + 1], decode=True)

Each step writes its key/value at ``cache_index``, attends to positions ``<=
cache_index`` and increments it, so step ``t`` equals position ``t`` of the full causal
pass. (``init_with_state(rng, x_full, decode=True)`` also allocates the cache.) More than
``max_len`` steps raises ``CacheError`` eagerly; under jit (the index is traced) the
output of such a step is NaN.

The pre-release protocol works too: ``cache=`` takes an ``nn.attention.Cache`` (defined
at init, allocated with ``initialize_cache``, mutated once per step; see
``flaxen/nn/cache.py``), whose entries live outside the module state.
"""


from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flaxen import jax_utils
from flaxen.errors import CacheError, LayerArgumentError, ParamNotFoundError, ShapeError
from flaxen.nn import initializers
from flaxen.nn.attention_fn import dot_product_attention as dot_product_attention
from flaxen.nn.attention_fn import mask_to_bias as mask_to_bias
from flaxen.nn.attention_masks import make_attention_mask as make_attention_mask
from flaxen.nn.attention_masks import make_causal_mask as make_causal_mask
from flaxen.nn.attention_masks import make_padding_mask as make_padding_mask
from flaxen.nn.base import Module
from flaxen.nn.cache import Cache as Cache
from flaxen.nn.cache import CacheEntry as CacheEntry
from flaxen.nn.cache import cache_step
from flaxen.nn.initializers import InitFn
from flaxen.nn.linear import DenseGeneral, default_kernel_init
from flaxen.nn.utils import as_tuple

_CacheEntry = CacheEntry  # the pre-release private name


def _causal_bias_mask(attn_shape: tuple[int, ...]) -> jax.Array:
    """Boolean ``(1, 1, attn..., attn...)``: flattened position j <= i."""
    n = int(np.prod(attn_shape))
    tri = np.tril(np.ones((n, n), np.bool_))
    return jnp.asarray(tri.reshape((1, 1) + attn_shape + attn_shape))



def _check_positive_int(path: str, name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise LayerArgumentError(path, name, "a positive int" + (" or None" if optional
                                 else ""), repr(value))


def _attention_axes(path: str, attention_axis: Any, nd: int) -> tuple[int, ...]:
    """The attended axes (default: all between batch and features), checked."""
    if attention_axis is None:
        return tuple(range(1, nd - 1))
    raw = as_tuple(attention_axis) if isinstance(attention_axis, (int, tuple, list)) else None
    if not raw or any(isinstance(a, bool) or not isinstance(a, int) or not -nd <= a < nd
                      for a in raw):
        raise LayerArgumentError(path, "attention_axis", f"an int or tuple of ints among "
                                 f"the axes between batch and features, 1..{nd - 2} for "
                                 f"rank-{nd} inputs", repr(attention_axis))
    axes = tuple(sorted(a % nd for a in raw))
    if any(not 1 <= a < nd - 1 for a in axes) or len(set(axes)) != len(axes):
        raise LayerArgumentError(path, "attention_axis", f"distinct axes between batch and "
                                 f"features, 1..{nd - 2} for rank-{nd} inputs",
                                 repr(attention_axis))
    return axes


class MultiHeadDotProductAttention(Module):
    """Multi-head attention with ``query``/``key``/``value``/``out`` projections."""

    def apply(self, inputs_q: jax.Array, inputs_kv: jax.Array | None, num_heads: int,
              dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
              qkv_features: int | None = None, out_features: int | None = None,
              attention_axis: int | Sequence[int] | None = None, causal_mask: bool = False,
              padding_mask: jax.Array | None = None,
              key_padding_mask: jax.Array | None = None,
              segmentation: jax.Array | None = None,
              key_segmentation: jax.Array | None = None, mask: jax.Array | None = None,
              decode: bool = False, cache: Cache | None = None,
              broadcast_dropout: bool = True,
              dropout_rng: jax.Array | None = None, dropout_rate: float = 0.0,
              deterministic: bool = False, precision: Any = None,
              kernel_init: InitFn = default_kernel_init,
              bias_init: InitFn = initializers.zeros, bias: bool = True,
              attention_fn: Callable[..., jax.Array] = dot_product_attention) -> jax.Array:
        """Projects to ``num_heads`` heads, attends, and projects back.

        Args:
          inputs_q: ``(batch, q dims..., features)``.
          inputs_kv: ``(batch, kv dims..., kv_features)``, or None for self-attention.
          num_heads: number of heads; ``qkv_features`` must be divisible by it.
          dtype, param_dtype: computation and parameter dtypes.
          qkv_features: size of the projected q/k/v (default ``features``).
          out_features: size of the output (default ``inputs_q.shape[-1]``).
          attention_axis: the attended axes (default: all between batch and features).
          causal_mask: position i attends only to positions <= i (flattened).
          padding_mask: ``(batch, q dims...)``, nonzero/True for real positions.
          key_padding_mask: ``(batch, kv dims...)``; default ``padding_mask``.
          segmentation, key_segmentation: segment ids; attend only within a segment.
          mask: any extra boolean mask ``(batch, 1 or heads, q dims..., kv dims...)``.
          decode: use the autoregressive cache (see the module docstring); in a decoding
            step the cache mask replaces the causal and padding masks (``mask`` still
            applies, broadcastable to ``(batch, heads, 1, max_len)``).
          cache: a pre-release decoding ``Cache`` (see ``Cache``): at init a mutable
            cache definition, in a decoding step a mutable, initialised cache. Needs
            ``causal_mask=True``; the cache mask replaces the causal and padding masks
            in a step (``mask`` still applies).
          broadcast_dropout, dropout_rng, dropout_rate, deterministic: attention dropout.
          precision, kernel_init, bias_init, bias: of the four ``DenseGeneral``s.
          attention_fn: called as ``attention_fn(q, k, v, dtype=, axis=, bias=,
            precision=, dropout_rng=, dropout_rate=, broadcast_dropout=,
            deterministic=)``, with masks turned into an additive ``bias``.

        Returns:
          ``(batch, q dims..., out_features)`` in ``dtype``. Params: ``query``, ``key``,
          ``value``: ``{kernel (F, H, D), bias (H, D)}``; ``out``: ``{kernel (H, D,
          out_features), bias (out_features,)}``. State with ``decode=True``:
          ``cached_key``/``cached_value`` ``(batch, max_len, H, D)``, ``cache_index`` ().
        """
        path = self.label
        inputs_q = jnp.asarray(inputs_q)
        inputs_kv = inputs_q if inputs_kv is None else jnp.asarray(inputs_kv)
        for name, x in (("inputs_q", inputs_q), ("inputs_kv", inputs_kv)):
            if x.ndim < 3:
                raise ShapeError(path, f"{name} rank", "rank >= 3 (batch, dims..., features)",
                                 f"rank {x.ndim} (shape {x.shape})")
        nd = inputs_q.ndim
        if inputs_kv.ndim != nd or inputs_kv.shape[0] != inputs_q.shape[0]:
            raise ShapeError(path, "inputs_kv shape", f"rank {nd} and batch "
                             f"{inputs_q.shape[0]} like inputs_q {inputs_q.shape}",
                             f"{inputs_kv.shape}")
        _check_positive_int(path, "num_heads", num_heads)
        _check_positive_int(path, "qkv_features", qkv_features, optional=True)
        _check_positive_int(path, "out_features", out_features, optional=True)
        if isinstance(dropout_rate, (int, float)) and not 0.0 <= dropout_rate < 1.0:
            raise LayerArgumentError(path, "dropout_rate", "a probability in [0, 1)",
                                     repr(dropout_rate), "Use deterministic=True to turn "
                                     "attention dropout off.")
        axes = _attention_axes(path, attention_axis, nd)
        if not self.is_initializing():
            self._check_stored_projection(path, "query", inputs_q, num_heads, qkv_features)
            self._check_stored_projection(path, "key", inputs_kv, num_heads, qkv_features)
        out_features = out_features or inputs_q.shape[-1]
        qkv_features = qkv_features or inputs_q.shape[-1]
        if qkv_features % num_heads:
            raise LayerArgumentError(path, "qkv_features", f"a multiple of num_heads "
                                     f"({num_heads})", qkv_features, "Pass qkv_features= "
                                     "divisible by num_heads (it defaults to the number of "
                                     f"input features, {inputs_q.shape[-1]}).")
        head_dim = qkv_features // num_heads
        dense = DenseGeneral.partial(axis=-1, features=(num_heads, head_dim), bias=bias,
                                     dtype=dtype, param_dtype=param_dtype, precision=precision,
                                     kernel_init=kernel_init, bias_init=bias_init)
        query = dense(inputs_q, name="query")
        key = dense(inputs_kv, name="key")
        value = dense(inputs_kv, name="value")

        masks: list[jax.Array] = []
        step = False
        in_range = None
        if cache is not None:
            if decode:
                raise LayerArgumentError(path, "decode and cache", "one of them", "both",
                                         "decode=True keeps the cache in module state; "
                                         "cache= is the pre-release Cache. Use one.")
            step_mask = cache_step(self, path, cache, causal_mask, inputs_q, key, value,
                                    axes, nd)
            if step_mask is not None:
                key, value, cache_mask, in_range = step_mask
                masks.append(cache_mask)
                step = True
        if decode:
            key, value, step, in_range = self._decode_cache(path, query, key, value, axes, nd)
            if step:
                length = key.shape[1]
                index = self.state("cache_index").value - 1
                masks.append((jnp.arange(length) <= index).reshape(1, 1, 1, length))
        if not step:
            masks += self._masks(path, inputs_q, inputs_kv, axes, causal_mask, padding_mask,
                                 key_padding_mask, segmentation, key_segmentation)
        if mask is not None:
            masks.append(jnp.asarray(mask).astype(jnp.bool_))
        attn_bias = None
        if masks:
            combined = masks[0]
            for m in masks[1:]:
                if m.ndim != combined.ndim:
                    raise ShapeError(path, "attention mask rank", f"rank {combined.ndim}",
                                     f"mask shape {m.shape}")
                combined = jnp.logical_and(combined, m)
            attn_bias = mask_to_bias(combined, dtype)
        x = attention_fn(query, key, value, dtype=dtype, axis=axes, bias=attn_bias,
                         precision=precision, dropout_rng=dropout_rng,
                         dropout_rate=dropout_rate, broadcast_dropout=broadcast_dropout,
                         deterministic=deterministic)
        out = DenseGeneral(x, features=out_features, axis=(-2, -1), bias=bias, dtype=dtype,
                           param_dtype=param_dtype, precision=precision,
                           kernel_init=kernel_init, bias_init=bias_init, name="out")
        if in_range is not None:
            # Past the cache's end under jit (no Python error possible): NaN, never a
            # plausible-looking output computed from an overwritten slot.
            out = jnp.where(in_range, out, jnp.asarray(jnp.nan, out.dtype))
        return out

    def _check_stored_projection(self, path: str, name: str, x: jax.Array, num_heads: int,
                                 qkv_features: int | None) -> None:
        """Blames the stored ``name/kernel`` (not qkv_features) when the input does not fit."""
        try:
            stored = self.get_param(name)
        except ParamNotFoundError:
            return  # the DenseGeneral reports the missing params
        kernel = stored.get("kernel") if isinstance(stored, dict) else None
        shape = tuple(getattr(kernel, "shape", ()))
        if len(shape) != 3:
            return
        fix = ("Most likely the input has another number of features than at init, or the "
               "params belong to another model; check the input shape or re-initialise.")
        what = "inputs_q" if name == "query" else "inputs_kv"
        if x.shape[-1] != shape[0]:
            raise ShapeError(path, f"{what} does not fit the stored {name}/kernel of shape "
                             f"{shape} (features, heads, head_dim)", f"{what} with "
                             f"{shape[0]} features", f"shape {x.shape} ({x.shape[-1]} "
                             "features)", fix)
        if shape[1] != num_heads:
            raise ShapeError(path, f"num_heads does not fit the stored {name}/kernel of "
                             f"shape {shape} (features, heads, head_dim)",
                             f"num_heads={shape[1]}", f"num_heads={num_heads}",
                             "Pass the num_heads the params were initialised with.")
        if qkv_features is not None and qkv_features != shape[1] * shape[2]:
            raise ShapeError(path, f"qkv_features does not fit the stored {name}/kernel of "
                             f"shape {shape} (features, heads, head_dim)",
                             f"qkv_features={shape[1] * shape[2]}",
                             f"qkv_features={qkv_features}",
                             "Pass the qkv_features the params were initialised with.")

    def _masks(self, path: str, inputs_q: jax.Array, inputs_kv: jax.Array,
               axes: tuple[int, ...], causal: bool, padding_mask: Any, key_padding_mask: Any,
               segmentation: Any, key_segmentation: Any) -> list[jax.Array]:
        """The boolean ``(batch, 1, q attn..., k attn...)`` masks requested by flags."""
        nd = inputs_q.ndim
        wanted = causal or padding_mask is not None or segmentation is not None
        if wanted and axes != tuple(range(1, nd - 1)):
            raise LayerArgumentError(path, "attention_axis with masks", "all axes between "
                                     f"batch and features {tuple(range(1, nd - 1))} when "
                                     "causal/padding/segmentation masks are used", axes,
                                     "Pass a full `mask=` instead.")
        masks = []
        q_dims, k_dims = inputs_q.shape[1:-1], inputs_kv.shape[1:-1]
        if causal:
            if q_dims != k_dims:
                raise ShapeError(path, "causal mask", f"key dims equal to query dims {q_dims}",
                                 f"key dims {k_dims}")
            masks.append(_causal_bias_mask(q_dims))
        pairs = ((padding_mask, key_padding_mask, False, "padding_mask"),
                 (segmentation, key_segmentation, True, "segmentation"))
        for qm, km, seg, name in pairs:
            if qm is None:
                continue
            km = qm if km is None else km
            for what, m, x in ((name, qm, inputs_q), (f"key_{name}", km, inputs_kv)):
                m = jnp.asarray(m)
                shp = m.shape[:-1] if m.ndim == x.ndim and m.shape[-1] == 1 else m.shape
                if shp != x.shape[:-1]:
                    raise ShapeError(path, f"{what} shape", f"{x.shape[:-1]} (the input shape "
                                     f"{x.shape} without features)", f"{m.shape}")
            masks.append(make_padding_mask(qm, km, jnp.bool_, segmentation_mask=seg))
        return masks

    def _decode_cache(self, path: str, query: jax.Array, key: jax.Array, value: jax.Array,
                      axes: tuple[int, ...], nd: int) -> tuple[jax.Array, jax.Array, bool, Any]:
        """Allocates the cache (first call) or writes one step into it.

        Returns ``(keys, values, is_step, in_range)``; ``in_range`` (None at allocation)
        is False for a step past the cache's end, whose output is then NaN under jit.
        """
        if nd != 3 or axes != (1,):
            raise LayerArgumentError(path, "decode=True inputs", "(batch, len, features) "
                                     "attending over axis 1", f"rank {nd}, axes {axes}")
        cached_key = self.state("cached_key")
        if not cached_key.exists():
            self.state("cached_key", key.shape, lambda _, s: jnp.zeros(s, key.dtype))
            self.state("cached_value", value.shape, lambda _, s: jnp.zeros(s, value.dtype))
            self.state("cache_index", (), lambda _, s: jnp.zeros(s, jnp.int32))
            return key, value, False, None
        cached_value = self.state("cached_value")
        cache_index = self.state("cache_index")
        ck, cv = cached_key.value, cached_value.value
        if key.shape[1] != 1 or key.shape[0] != ck.shape[0] or key.shape[2:] != ck.shape[2:]:
            raise ShapeError(path, "decoding step input", f"one position per step: projected "
                             f"keys of shape {(ck.shape[0], 1) + ck.shape[2:]} (cache "
                             f"{ck.shape})", f"{key.shape} (query {query.shape})",
                             "Feed inputs of shape (batch, 1, features) in decoding steps.")
        index = jnp.asarray(cache_index.value, jnp.int32)
        if not isinstance(index, jax.core.Tracer) and int(index) >= ck.shape[1]:
            raise CacheError(path, "decoding step", f"at most {ck.shape[1]} steps (the "
                             "length of the full input that allocated the cache)",
                             f"step {int(index) + 1}", "Allocate the cache with a longer "
                             "input: (batch, max_len, ...) with max_len >= every position "
                             "you decode.")
        zero = jnp.zeros((), jnp.int32)
        start = (zero, index, zero, zero)
        ck = lax.dynamic_update_slice(ck, key.astype(ck.dtype), start)
        cv = lax.dynamic_update_slice(cv, value.astype(cv.dtype), start)
        cached_key.value, cached_value.value = ck, cv
        cache_index.value = index + jnp.ones((), jnp.int32)
        return ck, cv, True, index < ck.shape[1]


class SelfAttention(MultiHeadDotProductAttention):
    """``MultiHeadDotProductAttention`` with keys and values from the same input.

    As the pre-release ``MultiHeadDotProductAttention.partial(inputs_kv=None)``, it also
    takes ``inputs_kv=`` (then it is plain multi-head attention over ``inputs_kv``).
    """

    def apply(self, inputs_q: jax.Array | None = None,  # type: ignore[override]
              num_heads: int | None = None, inputs_kv: jax.Array | None = None, *,
              inputs: jax.Array | None = None, **kwargs: Any) -> jax.Array:
        """Self-attention over ``inputs_q`` ``(batch, dims..., features)``.

        ``inputs=`` is accepted as another name of ``inputs_q``; ``num_heads`` is
        required; other keyword arguments as in ``MultiHeadDotProductAttention``.
        """
        path = self.label
        if (inputs_q is None) == (inputs is None):
            raise LayerArgumentError(path, "SelfAttention input", "exactly one of inputs_q "
                                     "(positional) or inputs=", "both" if inputs_q is not None
                                     else "neither", "Call it as `nn.SelfAttention(x, "
                                     "num_heads=8)`.")
        if num_heads is None:
            raise LayerArgumentError(path, "num_heads", "a positive int", "None (missing)",
                                     "Pass num_heads=, e.g. `nn.SelfAttention(x, "
                                     "num_heads=8)`.")
        x = inputs_q if inputs_q is not None else inputs
        assert x is not None
        return super().apply(x, inputs_kv, num_heads, **kwargs)


def scan_in_dim(*args: Any, **kwargs: Any) -> Any:
    """Deprecated alias of ``flaxen.jax_utils.scan_in_dim`` (moved there, as in 2020)."""
    warnings.warn("scan_in_dim moved to flaxen.jax_utils", DeprecationWarning, stacklevel=2)
    return jax_utils.scan_in_dim(*args, **kwargs)
