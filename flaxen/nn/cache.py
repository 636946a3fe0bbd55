"""The pre-release decoding cache: ``nn.attention.Cache`` and its entries.

A ``Cache`` is a ``Collection`` keyed by module path. The protocol, as in the
pre-release Flax (lm1b and wmt examples):

    with nn.attention.Cache().mutate() as cache_def:        # 1. define, at init
        _, params = Model.init_by_shape(rng, [(batch, length)], cache=cache_def)
    cache = cache_def.initialize_cache((batch, length))     # 2. allocate zeros
    for t in range(length):                                 # 3. one position per step
        with cache.mutate() as new_cache:
            logits = model(ids[:, t:t + 1], cache=new_cache)
        cache = new_cache

At init each caching module stores a shape descriptor at its path; ``initialize_cache``
turns every descriptor into a ``CacheEntry`` of zeros; each step writes one key/value at
position ``i`` and increments ``i``. User modules may keep their own entries (a position
counter, as the pre-release ``AddPositionEmbs`` did) by storing a descriptor at init,
``cache.store((ndim, tail_shape))`` (or the pre-release ``lambda: (ndim, tail_shape)`` or
``jnp.array([ndim, *tail_shape])``), and then reading ``cache.retrieve().i`` and storing
``entry.replace(i=entry.i + 1)`` in each step. A cache is a pytree: it can be the carry
of ``lax.while_loop`` or pass through ``jax.jit`` (immutable, outside ``mutate``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flaxen import struct
from flaxen.errors import CacheError, LayerArgumentError, ShapeError
from flaxen.nn.collection import Collection, register_collection

_INIT_FIX = ("Define the cache at init (`with nn.attention.Cache().mutate() as cache_def: "
             "Model.init_by_shape(rng, specs, cache=cache_def)`), allocate it with "
             "`cache = cache_def.initialize_cache((batch, max_length))`, and decode with "
             "`with cache.mutate() as new_cache: model(x, cache=new_cache)`.")


@struct.dataclass
class CacheEntry:
    """One module's slot: ``key``/``value`` ``(batch, length..., *tail)`` and the step ``i``
    (uint32 scalar: how many positions are filled)."""

    key: Any
    value: Any
    i: Any


@struct.dataclass
class CacheSpec:
    """What an attention layer stores at init: the rank and trailing shapes of its keys
    and values, ``(heads, head_dim)``. Static data, no arrays."""

    ndim: int = struct.field(pytree_node=False)
    key_tail: tuple[int, ...] = struct.field(pytree_node=False)
    value_tail: tuple[int, ...] = struct.field(pytree_node=False)
    dtype: Any = struct.field(pytree_node=False, default=None)


_CacheEntry = CacheEntry  # the pre-release private name


@register_collection
class Cache(Collection):
    """A ``Collection`` of per-module decoding slots (see the module docstring)."""

    def __bool__(self) -> bool:
        # Pre-release modules test `if cache:`; an empty cache definition must pass it.
        return True

    def initialize_cache(self, shape: Sequence[int], dtype: Any = None) -> Cache:
        """A new Cache with a zero ``CacheEntry`` for every descriptor stored at init.

        Args:
          shape: ``(batch, length)``: the batch shape plus the attention dims (the
            decoding length, or several dims for multi-dimensional attention).
          dtype: of the keys and values; default: each attention layer's dtype
            (float32 for descriptors stored by user modules).

        Returns:
          The allocated cache (immutable; open ``cache.mutate()`` around each step).
        """
        shape = tuple(shape)
        if not shape or any(isinstance(d, bool) or not isinstance(d, (int, np.integer))
                            or d < 1 for d in shape):
            raise CacheError("<initialize_cache>", "cache shape", "a tuple of positive ints "
                             "(batch, length)", repr(shape), _INIT_FIX)
        if not self.state:
            raise CacheError("<initialize_cache>", "cache definition", "descriptors stored "
                             "by caching modules at init", "an empty Cache", "Pass the "
                             "mutable cache definition as `cache=` to the model's init "
                             "(and `causal_mask=True` to its attention layers). " + _INIT_FIX)
        return self.with_state({path: _allocate(path, desc, shape, dtype)
                                for path, desc in self.state.items()})


def _descriptor(path: str, desc: Any) -> tuple[int, tuple[int, ...], tuple[int, ...], Any]:
    """(ndim, key tail, value tail, dtype) from any pre-release descriptor form."""
    if isinstance(desc, CacheSpec):
        return desc.ndim, desc.key_tail, desc.value_tail, desc.dtype
    if isinstance(desc, CacheEntry):
        raise CacheError(path, "cache definition", "shape descriptors from init",
                         "an already initialised entry", "Call `initialize_cache` on the "
                         "cache definition filled at init, not on an allocated cache.")
    raw = desc() if callable(desc) else desc
    try:
        if (isinstance(raw, tuple) and len(raw) == 2
                and isinstance(raw[1], (tuple, list))):  # (ndim, tail): May 2020
            ndim, tail = int(raw[0]), tuple(int(d) for d in raw[1])
        else:  # [ndim, *tail]: June 2020 (an int array)
            flat = np.asarray(raw).reshape(-1)
            ndim, tail = int(flat[0]), tuple(int(d) for d in flat[1:])
    except (TypeError, ValueError) as e:
        raise CacheError(path, "cache descriptor", "(ndim, tail_shape), a callable "
                         "returning it, or an int array [ndim, *tail_shape]", repr(raw),
                         "Store one of these at init with `cache.store(...)`.") from e
    return ndim, tail, tail, None


def _allocate(path: str, desc: Any, shape: tuple[int, ...], dtype: Any) -> CacheEntry:
    ndim, key_tail, value_tail, own_dtype = _descriptor(path, desc)
    if len(shape) + len(key_tail) != ndim:
        raise CacheError(path, "cache shape", f"the batch shape and the attention dims: "
                         f"{ndim - len(key_tail)} dims, as the keys have rank {ndim} with "
                         f"trailing {key_tail}", f"{shape}", "Pass (batch, length) for "
                         "sequences, e.g. `initialize_cache((batch, max_length))`.")
    dt = dtype if dtype is not None else (own_dtype if own_dtype is not None else jnp.float32)
    return CacheEntry(key=jnp.zeros(shape + key_tail, dt), value=jnp.zeros(shape + value_tail, dt),
                      i=jnp.zeros((), jnp.uint32))


def cache_step(module: Any, path: str, cache: Any, causal_mask: bool, inputs_q: jax.Array,
               key: jax.Array, value: jax.Array, axes: tuple[int, ...], nd: int
               ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array] | None:
    """The attention layer's side of the protocol.

    At init (no entry yet) stores a ``CacheSpec`` and returns None: the layer runs as
    an ordinary causal pass. In a step, writes ``key``/``value`` (one position) at
    position ``i``, increments ``i`` and returns ``(keys, values, mask, in_range)``:
    the whole cache, the boolean mask of the filled positions, ``(1, 1, 1..., length...)``,
    and whether this step is within the cache's length.
    """
    if not isinstance(cache, Cache):
        raise LayerArgumentError(path, "cache", "an nn.attention.Cache (or None)",
                                 type(cache).__name__, _INIT_FIX)
    if not causal_mask:
        raise LayerArgumentError(path, "cache", "causal_mask=True with a cache (caching is "
                                 "only supported for causal attention)", "causal_mask=False",
                                 "Pass causal_mask=True to the attention that decodes.")
    if axes != tuple(range(1, nd - 1)):
        raise LayerArgumentError(path, "attention_axis with a cache", f"all axes between "
                                 f"batch and features {tuple(range(1, nd - 1))}", axes)
    if not cache.mutable:
        raise CacheError(path, "cache", "a mutable cache", "an immutable one",
                         "Open the step with `with cache.mutate() as new_cache:` and pass "
                         "`cache=new_cache`; `new_cache` is the cache for the next step.")
    entry = cache.retrieve()
    if not isinstance(entry, CacheEntry):
        if module.is_initializing() and entry is None:
            cache.store(CacheSpec(key.ndim, tuple(key.shape[-2:]), tuple(value.shape[-2:]),
                                  key.dtype))
            return None
        if entry is None:
            got = f"no entry for this module (the cache has {sorted(cache.as_dict())})"
        else:
            got = "a cache definition that was never initialised"
        raise CacheError(path, "decoding cache", "an initialised cache with an entry for "
                         "this module", got, _INIT_FIX)
    ck, cv = entry.key, entry.value
    attn_shape = tuple(ck.shape[a] for a in axes)
    expected = tuple(1 if a in axes else d for a, d in enumerate(ck.shape[:-2]))
    expected += inputs_q.shape[-1:]
    if inputs_q.shape != expected or key.shape[-2:] != ck.shape[-2:]:
        raise ShapeError(path, "decoding step input", f"one position per step: shape "
                         f"{expected} (cache keys {ck.shape})", f"{inputs_q.shape}",
                         "Feed the next token only, e.g. `ids[:, t:t + 1]`.")
    total = math.prod(attn_shape)
    i = entry.i
    if not isinstance(i, jax.core.Tracer) and int(i) >= total:
        raise CacheError(path, "decoding step", f"at most {total} steps (the cache was "
                         f"initialised with length {attn_shape})", f"step {int(i) + 1}",
                         "Allocate a longer cache: `cache_def.initialize_cache((batch, "
                         "max_length))` with max_length >= prompt plus generated tokens.")
    index = jnp.asarray(i).astype(jnp.int32)
    starts = [jnp.zeros((), jnp.int32)] * ck.ndim
    rest, size = index, total
    for a in axes:  # the flat position i as a multi-index over the attention dims
        size //= ck.shape[a]
        starts[a], rest = rest // size, rest % size
    ck = lax.dynamic_update_slice(ck, key.astype(ck.dtype), starts)
    cv = lax.dynamic_update_slice(cv, value.astype(cv.dtype), starts)
    cache.store(dataclasses.replace(entry, key=ck, value=cv,
                                    i=entry.i + jnp.ones((), entry.i.dtype)))
    filled = jnp.arange(total, dtype=jnp.int32) <= index
    mask = filled.reshape((1, 1) + (1,) * len(axes) + attn_shape)
    return ck, cv, mask, index < total

