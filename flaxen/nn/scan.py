"""A stack of identical blocks with stacked parameters, run by ``jax.lax.scan``.

``nn.ScanLayers(x, block=Block.partial(...), num_layers=24, name='blocks')`` inside an
``apply`` runs ``Block`` 24 times on ``x``. The 24 blocks' parameters are stored once per
name with a leading layer axis (``blocks/attention/query/kernel`` of shape ``[24, ...]``),
so paths stay readable, and ``jax.lax.scan`` traces and compiles the block once: trace and
compile time no longer grow with depth. ``remat=True`` wraps each block in
``jax.checkpoint``: activations inside a block are recomputed in the backward pass instead
of stored, trading compute for memory.

``stack_layers`` / ``unstack_layers`` convert between this layout and the per-layer one
(``block_0``, ``block_1``, ... as a Python loop of ``Block(x, name=f'block_{i}')`` creates),
so the two give identical outputs for converted parameters.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from flaxen import nn
    >>> class Block(nn.Module):
    ...     def apply(self, x):
    ...         return x + nn.Dense(x, 4)
    >>> class Net(nn.Module):
    ...     def apply(self, x):
    ...         return nn.ScanLayers(x, block=Block, num_layers=3, name="blocks")
    >>> _, params = Net.init(jax.random.PRNGKey(0), jnp.ones((2, 4)))
    >>> jax.tree.map(jnp.shape, params)
    {'blocks': {'Dense_0': {'bias': (3, 4), 'kernel': (3, 4, 4)}}}
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxen.errors import LayerArgumentError
from flaxen.nn.base import Module, fold_in_str
from flaxen.nn.stochastic import is_stochastic, make_rng, stochastic


class ScanLayers(Module):
    """``num_layers`` applications of ``block`` to ``x``, parameters stacked on axis 0."""

    def apply(self, x: Any, block: type[Module], num_layers: int, remat: bool = False,
              loop: bool = False, **block_kwargs: Any) -> Any:
        """Runs ``x = block(x, **block_kwargs)`` ``num_layers`` times.

        Args:
          x: the carry, e.g. ``[batch, length, features]``; each block must return the same
            shape and dtype.
          block: a Module class (``Block.partial(...)`` to bind hyper-parameters). Its
            parameters are created once per layer, each from its own key, and stored
            stacked: every leaf gets a leading axis of size ``num_layers``.
          num_layers: how many blocks.
          remat: recompute each block's activations in the backward pass
            (``jax.checkpoint``) instead of storing them.
          loop: run the blocks one by one in Python (block ``i`` reads slice ``i`` of the
            stacked parameters) instead of ``lax.scan``; needed when a block keeps state in
            an ``nn.stateful`` collection (e.g. a decoding cache), which a scan cannot
            write. Each block's state lives under ``<this module>/<i>``.
          **block_kwargs: further keyword arguments of every block (the same for all).

        Returns:
          The output of the last block.
        """
        frame = self._frame
        path = frame.label()
        if not isinstance(num_layers, int) or num_layers < 1:
            raise LayerArgumentError(path, "num_layers", "an int >= 1", repr(num_layers))
        if frame.is_init and not frame.params:
            frame.params.update(self._init_stack(x, block, num_layers, block_kwargs))
        params = frame.params
        sizes = {np.shape(v)[0] if np.ndim(v) else None for v in jax.tree.leaves(params)}
        if sizes and sizes != {num_layers}:
            raise LayerArgumentError(path, "stacked parameters", f"a leading axis of size "
                                     f"num_layers={num_layers} on every leaf",
                                     f"leading sizes {sorted(map(str, sizes))}",
                                     "Pass the num_layers the parameters were created with, or "
                                     "convert per-layer parameters with `nn.stack_layers`.")
        base = make_rng() if is_stochastic() else None
        if loop:
            for i in range(num_layers):
                layer = jax.tree.map(lambda v, i=i: v[i], params)
                x = _run_block(block, layer, x, base, i, block_kwargs, name=str(i))
            return x

        def body(carry: Any, layer: tuple[Any, jax.Array]) -> tuple[Any, None]:
            p, i = layer
            return _run_block(block, p, carry, base, i, block_kwargs), None

        if remat:
            body = jax.checkpoint(body)
        # A scan needs each block to return its input's shape and dtype; say so in flaxen's
        # words rather than lax.scan's.
        first = jax.tree.map(lambda v: v[0], params)
        out = jax.eval_shape(lambda p, c: body(c, (p, jnp.zeros((), jnp.int32)))[0], first, x)
        want = jax.tree.map(lambda v: (jnp.shape(v), jnp.result_type(v)), x)
        got = jax.tree.map(lambda v: (v.shape, v.dtype), out)
        if want != got:
            raise LayerArgumentError(path, "block", "a block whose output has its input's "
                                     f"shape and dtype {want}", f"output {got}",
                                     "Make the block return the carry's shape and dtype "
                                     "(e.g. cast its output, or pass inputs in the block's "
                                     "dtype).")
        x, _ = jax.lax.scan(body, x, (params, jnp.arange(num_layers)))
        return x

    def _init_stack(self, x: Any, block: type[Module], num_layers: int,
                    block_kwargs: dict) -> dict:
        """Every layer's parameters, created from its own key by one vmapped init."""
        keys = jax.random.split(fold_in_str(self._frame.rng, "layers"), num_layers)

        def init_one(key: jax.Array) -> dict:
            with stochastic(jax.random.fold_in(key, 1)):
                return block.init(key, x, **block_kwargs)[1]

        return jax.vmap(init_one)(keys)


def _run_block(block: type[Module], params: dict, x: Any, base: Any, i: Any,
               kwargs: dict, name: str | None = None) -> Any:
    if base is None:
        return block.call(params, x, name=name, **kwargs)
    return block.call(params, x, name=name, _rng=jax.random.fold_in(base, i), **kwargs)


def stack_layers(params: dict, prefix: str, name: str) -> dict:
    """Per-layer parameters ``{prefix}0``, ``{prefix}1``, ... stacked into one entry ``name``.

    Args:
      params: a params dict holding ``f'{prefix}{i}'`` for ``i = 0..N-1`` (other entries
        are kept as they are).
      prefix: e.g. ``'block_'``.
      name: the name of the ``ScanLayers`` module, e.g. ``'blocks'``.

    Returns:
      A new dict: the layers replaced by ``name``, each leaf ``[N, ...]``.

    Raises:
      LayerArgumentError: no layers, a gap in the numbering, or layers whose parameter
        names or shapes differ.
    """
    pattern = re.compile(re.escape(prefix) + r"(\d+)$")
    found = {int(m.group(1)): k for k in params if (m := pattern.match(k))}
    if not found or sorted(found) != list(range(len(found))):
        raise LayerArgumentError(name, f"layers named {prefix}0, {prefix}1, ...",
                                 "consecutive layers from 0", sorted(found) or "none",
                                 f"Entries present: {sorted(params)[:20]}.")
    layers = [params[found[i]] for i in range(len(found))]
    first = jax.tree.structure(layers[0])
    for i, layer in enumerate(layers):
        if jax.tree.structure(layer) != first or any(  # type: ignore[operator]
                np.shape(a) != np.shape(b)
                for a, b in zip(jax.tree.leaves(layer), jax.tree.leaves(layers[0]))):
            raise LayerArgumentError(name, f"layer {prefix}{i}", f"the parameters of "
                                     f"{prefix}0 (same names and shapes)", "different ones",
                                     "Only identical blocks can be stacked.")
    out = {k: v for k, v in params.items() if k not in found.values()}
    out[name] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return out


def unstack_layers(params: dict, name: str, prefix: str) -> dict:
    """The inverse of ``stack_layers``: entry ``name`` split into ``{prefix}0``, ...

    Raises:
      LayerArgumentError: ``params`` has no entry ``name``.
    """
    if name not in params:
        raise LayerArgumentError(name, "stacked layers", f"an entry {name!r}",
                                 f"entries {sorted(params)[:20]}",
                                 "Pass the name of the ScanLayers module.")
    stacked = params[name]
    n = jax.tree.leaves(stacked)[0].shape[0]
    out = {k: v for k, v in params.items() if k != name}
    for i in range(n):
        out[f"{prefix}{i}"] = jax.tree.map(lambda v, i=i: v[i], stacked)
    return out
