"""An ``Optimizer`` laid out over a ``Mesh`` by sharding rules: ``optimizer.shard(mesh, rules)``.

The rules (``flaxen.sharding``) decide each parameter's ``PartitionSpec``. The optimizer
state follows its parameters whatever the optimizer is: a state leaf whose path contains a
parameter's path and whose shape is that parameter's shape (Adam's ``mu``/``nu``, momentum
buffers, a ``MultiOptimizer``'s per-group states, any optax transformation through
``optim.Optax``) gets the parameter's spec; every other leaf (step counts, injected
hyper-parameters, Adafactor's factored statistics) is replicated.

Example:
    >>> import jax.numpy as jnp
    >>> from flaxen import optim, sharding
    >>> opt = optim.Adam(1e-3).create({"w": jnp.ones((16, 4))})
    >>> opt = opt.shard(sharding.make_mesh(data=8), sharding.fully_sharded())
    >>> opt.state.param_states[0].mu["w"].sharding.spec
    P('batch', None)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flaxen import sharding
from flaxen.nn.base import Model
from flaxen.traverse_util import path_to_str


def _segments(path: Any) -> tuple[str, ...]:
    """A key path as its ``/``-separated names (a key ``'/a/b'`` counts as ``a``, ``b``)."""
    return tuple(s for s in path_to_str(path).split("/") if s)


def _params_of(target: Any) -> Any:
    return target.params if isinstance(target, Model) else target


def optimizer_specs(optimizer: Any, mesh: Mesh, rules: sharding.Rules) -> Any:
    """A tree like ``optimizer`` holding the ``PartitionSpec`` of every array leaf.

    ``optimizer`` may be concrete or abstract (``jax.eval_shape`` of its creation), so
    shardings can be computed before anything is allocated.
    """
    params = _params_of(optimizer.target)
    table: dict[tuple[str, ...], tuple[tuple[int, ...], P]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        shape = tuple(np.shape(leaf))
        spec = sharding.spec_for(path_to_str(path), shape, mesh, rules)
        table[_segments(path)] = (shape, spec)
    longest = max((len(k) for k in table), default=0)

    def spec_of(path: Any, leaf: Any) -> P:
        names = _segments(path)
        shape = tuple(np.shape(leaf))
        # The longest run of names that is a parameter's path, with that parameter's shape.
        for size in range(min(longest, len(names)), 0, -1):
            for start in range(len(names) - size, -1, -1):
                hit = table.get(names[start:start + size])
                if hit is not None and hit[0] == shape:
                    return hit[1]
        return P()

    return jax.tree_util.tree_map_with_path(spec_of, optimizer)


def optimizer_shardings(optimizer: Any, mesh: Mesh, rules: sharding.Rules) -> Any:
    """A tree like ``optimizer`` holding the ``NamedSharding`` of every array leaf (for
    ``jax.jit(..., out_shardings=...)`` or a checkpoint's restore target)."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s),
                        optimizer_specs(optimizer, mesh, rules),
                        is_leaf=lambda s: isinstance(s, P))


def shard_optimizer(optimizer: Any, mesh: Mesh, rules: sharding.Rules) -> Any:
    """``optimizer`` with every array placed on ``mesh`` as ``rules`` say."""
    return jax.device_put(optimizer, optimizer_shardings(optimizer, mesh, rules))


def constrain(optimizer: Any, mesh: Mesh, rules: sharding.Rules) -> Any:
    """Inside ``jax.jit``: ``optimizer`` pinned to the rules' layout
    (``jax.lax.with_sharding_constraint``), so the step's outputs keep it even where XLA's
    own propagation would pick another (e.g. an optimizer created or rebuilt inside the
    step)."""
    return jax.lax.with_sharding_constraint(optimizer,
                                            optimizer_shardings(optimizer, mesh, rules))


def create_sharded(create_fn: Callable[[], Any], mesh: Mesh, rules: sharding.Rules) -> Any:
    """Runs ``create_fn()`` (which builds an Optimizer) directly into its shards.

    The shapes come from ``jax.eval_shape``; then ``create_fn`` runs under ``jax.jit``
    with those ``out_shardings``, so no device ever holds the whole model. ``create_fn``
    must be deterministic (take its PRNG key from the closure).
    """
    abstract = jax.eval_shape(create_fn)
    return jax.jit(create_fn, out_shardings=optimizer_shardings(abstract, mesh, rules))()
