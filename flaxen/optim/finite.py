"""An opt-in check that stops training on a non-finite loss or gradient.

``grads = optim.check_finite(grads, loss)`` returns ``grads`` unchanged, and raises
``NonFiniteError`` naming the loss or the first non-finite gradient path (in the order of
``jax.tree.leaves``) when one holds a NaN or an infinity.

* On concrete values (outside ``jit``) it raises directly.
* Under ``jax.jit`` / ``jax.pmap`` it computes one ``isfinite`` reduction per leaf on the
  device; only when one is false does a ``lax.cond`` branch hand the flags to the host
  with ``jax.debug.callback``, which raises there. JAX reports that as a
  ``JaxRuntimeError`` whose message contains the flaxen message.

Cost: one extra read of every gradient (an ``all(isfinite(g))`` per leaf) and a
conditional per step; measured in ``benchmarks/finite_check.py`` (see docs/optim.md).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxen.errors import NonFiniteError
from flaxen.traverse_util import path_to_str


def _raise_first(names: tuple[str, ...], flags: Any) -> None:
    flags = np.asarray(flags)
    if not flags.all():
        raise NonFiniteError(names[int(np.argmin(flags))])


def check_finite(grads: Any, loss: Any = None) -> Any:
    """``grads``, after checking that ``loss`` and every gradient leaf are finite.

    Args:
      grads: the gradient pytree (e.g. of ``optimizer.target``).
      loss: the scalar loss (optional).

    Returns:
      ``grads``, unchanged.

    Raises:
      NonFiniteError: directly for concrete values; under ``jit`` through
        ``jax.debug.callback`` (raised as ``JaxRuntimeError`` carrying the message).
    """
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    names = [f'the gradient of "{path_to_str(p) or "<root>"}"' for p, _ in flat]
    leaves = [x for _, x in flat]
    if loss is not None:
        names.insert(0, "the loss")
        leaves.insert(0, loss)
    if not leaves:
        return grads
    flags = jnp.stack([jnp.all(jnp.isfinite(jnp.asarray(x))) for x in leaves])
    if isinstance(flags, jax.core.Tracer):
        # Call back to the host only on a bad step: a host callback every step would
        # dominate a small model's step time.
        def report(f: Any) -> None:
            jax.debug.callback(_raise_first, tuple(names), f)

        jax.lax.cond(jnp.all(flags), lambda f: None, report, flags)
    else:
        _raise_first(tuple(names), flags)
    return grads
