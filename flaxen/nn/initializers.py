"""Parameter initializers: ``init(key, shape, dtype=float32) -> array``.

Re-exported from ``jax.nn.initializers`` under the usual names, so that user code and
the layers share one implementation (JAX's, tested upstream). ``call_init`` calls any
initializer, new style ``(key, shape, dtype)`` or pre-release style ``(key, shape)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.nn.initializers import constant as constant
from jax.nn.initializers import delta_orthogonal as delta_orthogonal
from jax.nn.initializers import glorot_normal as glorot_normal
from jax.nn.initializers import glorot_uniform as glorot_uniform
from jax.nn.initializers import he_normal as he_normal
from jax.nn.initializers import he_uniform as he_uniform
from jax.nn.initializers import kaiming_normal as kaiming_normal
from jax.nn.initializers import kaiming_uniform as kaiming_uniform
from jax.nn.initializers import lecun_normal as lecun_normal
from jax.nn.initializers import lecun_uniform as lecun_uniform
from jax.nn.initializers import normal as normal
from jax.nn.initializers import ones as ones
from jax.nn.initializers import orthogonal as orthogonal
from jax.nn.initializers import truncated_normal as truncated_normal
from jax.nn.initializers import uniform as uniform
from jax.nn.initializers import variance_scaling as variance_scaling
from jax.nn.initializers import xavier_normal as xavier_normal
from jax.nn.initializers import xavier_uniform as xavier_uniform
from jax.nn.initializers import zeros as zeros
from jax.typing import DTypeLike

InitFn = Callable[..., Any]
"""An initializer: ``init(key, shape, dtype) -> array`` (the ``jax.nn.initializers``
convention). A pre-release two-argument ``init(key, shape)`` is accepted too; see
``call_init``."""


def _takes_dtype(init: InitFn) -> bool:
    """Whether ``init`` accepts a third positional argument (the dtype)."""
    try:
        inspect.signature(init).bind(None, None, None)
    except TypeError:
        return False
    except ValueError:  # no signature (a C function): assume the jax convention
        return True
    return True


def call_init(init: InitFn, key: jax.Array, shape: Sequence[int] | None,
              dtype: DTypeLike = jnp.float32) -> Any:
    """Calls ``init(key, shape, dtype)``, or ``init(key, shape)`` for an old-style one.

    The pre-release initializers took ``(key, shape)`` only; such an initializer is called
    with two arguments and its result cast to ``dtype``, so both kinds work everywhere.

    Args:
      init: the initializer.
      key: a PRNG key.
      shape: the shape of the value (None for a parameter that is an arbitrary pytree).
      dtype: the dtype of the value (float32 by default).

    Returns:
      What ``init`` returns: usually an array of ``shape`` and ``dtype``.

    Example:
        >>> call_init(lambda key, shape: jnp.ones(shape), jax.random.key(0), (2,),
        ...           jnp.bfloat16).dtype
        dtype(bfloat16)
    """
    if _takes_dtype(init):
        return init(key, shape, dtype)
    out = init(key, shape)
    if hasattr(out, "astype") and jnp.dtype(dtype) != jnp.float32:
        out = out.astype(dtype)
    return out
