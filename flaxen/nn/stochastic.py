"""Random keys for stochastic modules (dropout): ``nn.stochastic`` and ``nn.make_rng``.

The pre-release spelling, kept: ``with nn.stochastic(key): y = model(x)`` and, inside a
module, ``key = nn.make_rng()``. Keys are ``fold_in(base, 1)``, ``fold_in(base, 2)``, ...
in call order, so no two draws in one scope share a key.

The explicit path does the same without a ``with`` block: ``model(x, _rng=key)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import jax

from flaxen.errors import MissingRngError, StateTraceError
from flaxen.nn._context import current_frame, current_path, pushed, stacks


@dataclasses.dataclass
class _RngScope:
    base: jax.Array
    counter: int = 0
    # init() opens a scope from its own key; such keys may be constants under jit.
    allow_constant: bool = False


@contextlib.contextmanager
def stochastic(rng: jax.Array) -> Iterator[None]:
    """Makes ``make_rng()`` (and so dropout) available inside the block.

    Open it inside any ``jax.jit``/``jax.grad`` you apply, with the key passed in as an
    argument, so that every step draws fresh keys.

    Args:
      rng: a PRNG key (``jax.random.PRNGKey`` or ``jax.random.key``).
    """
    with pushed(stacks.rngs, _RngScope(rng)):
        yield


@contextlib.contextmanager
def _init_scope(rng: jax.Array) -> Iterator[None]:
    """The scope ``init`` opens when the caller opened none (keys may be constants)."""
    with pushed(stacks.rngs, _RngScope(rng, allow_constant=True)):
        yield


def is_stochastic() -> bool:
    """Whether a ``stochastic`` scope (or an explicit ``_rng``) is active."""
    return bool(stacks.rngs)


def make_rng() -> jax.Array:
    """Returns a fresh PRNG key from the innermost ``stochastic`` scope.

    Raises:
      MissingRngError: no scope is active; the message names the module and the fix.
      StateTraceError: the scope's key is a constant but the key is drawn inside
        ``jax.jit``/``lax.scan``, which would bake the same key into every call.
    """
    if not stacks.rngs:
        frame = current_frame()
        raise MissingRngError(current_path(), frame.class_name if frame is not None else "")
    scope = stacks.rngs[-1]
    scope.counter += 1
    key = jax.random.fold_in(scope.base, scope.counter)
    staged = isinstance(key, jax.core.Tracer) and not isinstance(scope.base, jax.core.Tracer)
    if staged and not scope.allow_constant:
        raise StateTraceError(current_path(), "a random key (make_rng/dropout)")
    return key
