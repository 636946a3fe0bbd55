"""Dropout: a plain function that draws its key from the module system (``nn.make_rng``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flaxen.errors import LayerArgumentError
from flaxen.nn.stochastic import make_rng
from flaxen.nn.utils import current_label


def dropout(inputs: jax.Array, rate: float, deterministic: bool = False,
            rng: jax.Array | None = None) -> jax.Array:
    """Zeroes each element with probability ``rate`` and scales the rest by ``1/(1-rate)``.

    The key comes from ``nn.make_rng()`` (so every call, in every layer, gets a fresh
    key) unless ``rng`` is given. Provide keys with ``model(x, _rng=key)`` or
    ``with nn.stochastic(key):``; pass ``deterministic=True`` for evaluation.

    Args:
      inputs: array of any shape and floating dtype.
      rate: the drop probability, in ``[0, 1)`` (checked when it is a number or a
        concrete array; a traced rate is used as it is).
      deterministic: if True, returns ``inputs`` unchanged (no key needed).
      rng: an explicit PRNG key (optional).

    Returns:
      Array of the shape and dtype of ``inputs``.

    Raises:
      LayerArgumentError: ``rate`` is outside ``[0, 1)``, or ``inputs`` is not floating.
      MissingRngError: no key is available (not deterministic, no ``rng``, no scope).
    """
    concrete = isinstance(rate, int | float | np.number) or (
        isinstance(rate, np.ndarray | jax.Array) and np.ndim(rate) == 0
        and not isinstance(rate, jax.core.Tracer))
    if concrete and not 0.0 <= float(rate) < 1.0:
        raise LayerArgumentError(current_label(), "dropout rate", "a probability in [0, 1)", rate,
                                 "rate=1 would drop everything; use deterministic=True to "
                                 "turn dropout off.")
    if deterministic or (concrete and float(rate) == 0.0):
        return inputs
    inputs = jnp.asarray(inputs)
    if not jnp.issubdtype(inputs.dtype, jnp.inexact):
        raise LayerArgumentError(current_label(), "dropout input dtype", "a floating dtype",
                                 inputs.dtype, "Dropout scales the kept values by "
                                 "1/(1-rate); cast first, e.g. `x.astype(jnp.float32)`.")
    if rng is None:
        rng = make_rng()
    keep_prob = 1.0 - rate
    keep = jax.random.bernoulli(rng, keep_prob, inputs.shape)
    scaled = inputs / jnp.asarray(keep_prob, inputs.dtype)
    return lax.select(keep, scaled, jnp.zeros_like(inputs))

