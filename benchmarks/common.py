"""Pieces every benchmark shares: loss, data, step loops, and peer availability."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.harness import RunFn

LEARNING_RATE = 0.1
BETA = 0.9


class Skip(Exception):
    """An implementation that cannot run here (a peer not installed, a layer not landed)."""


def require(module: str) -> Any:
    """Imports ``module`` or raises ``Skip`` naming what is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise Skip(f"{module} not installed ({e.name})") from e


def require_attr(obj: Any, name: str, what: str) -> Any:
    """``getattr(obj, name)`` or ``Skip`` (for flaxen parts that have not landed yet)."""
    if not hasattr(obj, name):
        raise Skip(f"{what} not available yet")
    return getattr(obj, name)


def xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of ``logits`` [batch, classes] f32, int ``labels`` [batch]."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def momentum_update(params: Any, mom: Any, grads: Any) -> tuple[Any, Any]:
    """The hand-written momentum SGD update (the flax ``Momentum`` rule, optax ``sgd``):
    ``m <- beta * m + g``, ``p <- p - lr * m``."""
    mom = jax.tree.map(lambda m, g: BETA * m + g, mom, grads)
    params = jax.tree.map(lambda p, m: p - LEARNING_RATE * m, params, mom)
    return params, mom


def batch(key: jax.Array, x_shape: tuple[int, ...], classes: int,
          dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """Random inputs ``x_shape`` of ``dtype`` and int32 labels in ``[0, classes)``."""
    kx, ky = jax.random.split(key)
    return (jax.random.normal(kx, x_shape, dtype),
            jax.random.randint(ky, (x_shape[0],), 0, classes))


def carry_loop(step: Callable[..., Any], state: Any, *args: Any) -> RunFn:
    """``run(n)``: ``state = step(state, *args)`` n times, then block on the state."""
    cell = [state]

    def run(n: int) -> None:
        s = cell[0]
        for _ in range(n):
            s = step(s, *args)
        jax.block_until_ready(s)
        cell[0] = s

    return run


def effect_loop(step: Callable[..., Any], *args: Any) -> RunFn:
    """``run(n)``: call ``step(*args)`` n times (it updates its arguments in place, as
    Flax NNX does), then block on the last result."""

    def run(n: int) -> None:
        out = None
        for _ in range(n):
            out = step(*args)
        jax.block_until_ready(out)

    return run


def load_example(name: str) -> Any:
    """``examples/<name>/models.py`` as the module ``examples.<name>.models``.

    Raises ``Skip`` if the example has not landed yet.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, "examples", name, "models.py")):
        raise Skip(f"examples/{name}/models.py not available yet")
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(f"examples.{name}.models")


def add_bias(x: jax.Array, b: jax.Array) -> jax.Array:
    """``x + b`` over the last axis, with explicit rank (valid under strict rank promotion)."""
    return x + b.reshape((1,) * (x.ndim - 1) + b.shape)
