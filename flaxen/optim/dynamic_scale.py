"""Dynamic loss scaling for float16 training (pre-release ``flax.optim.DynamicScale``).

float16 gradients underflow; multiplying the loss by a large ``scale`` before
differentiating and dividing the gradients by it afterwards keeps them representable. The
scale halves (``backoff_factor``) whenever a gradient is not finite and doubles
(``growth_factor``) after ``growth_interval`` finite steps in a row. bfloat16 has float32's
exponent range and does not need this.

Example:
    >>> import jax.numpy as jnp
    >>> from flaxen import optim
    >>> ds = optim.DynamicScale()
    >>> grad_fn = ds.value_and_grad(lambda p: jnp.sum(p ** 2))
    >>> ds, is_finite, loss, grad = grad_fn(jnp.ones(2))
    >>> bool(is_finite), float(loss), grad.tolist()
    (True, 2.0, [2.0, 2.0])

In a train step, skip the update when ``is_finite`` is False::

    new_opt = optimizer.apply_gradient(grad)
    optimizer = jax.tree.map(functools.partial(jnp.where, is_finite), new_opt, optimizer)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from flaxen import struct


class DynamicScaleResult(NamedTuple):
    """What the function returned by ``DynamicScale.value_and_grad`` gives."""

    dynamic_scale: DynamicScale
    finite: jax.Array  # bool scalar: every gradient entry is finite
    aux: Any  # the function's value, unscaled: ``(loss, aux)`` if has_aux else ``loss``
    grad: Any  # float32 gradients, unscaled


@struct.dataclass
class DynamicScale:
    """Loss-scale state: a pytree (``fin_steps``, ``scale``) with static policy fields.

    Attributes:
        growth_factor: multiplies ``scale`` after ``growth_interval`` finite steps (2.0).
        backoff_factor: multiplies ``scale`` after a non-finite step (0.5).
        growth_interval: finite steps in a row before growing (2000).
        fin_steps: finite steps since the last change (int32 scalar).
        scale: the current loss scale (float32 scalar, 2**16 at first).
    """

    growth_factor: float = struct.field(pytree_node=False, default=2.0)
    backoff_factor: float = struct.field(pytree_node=False, default=0.5)
    growth_interval: int = struct.field(pytree_node=False, default=2000)
    fin_steps: Any = 0
    scale: Any = 65536.0

    def value_and_grad(self, fun: Callable[..., Any], argnums: int | tuple[int, ...] = 0,
                       has_aux: bool = False,
                       axis_name: str | None = None) -> Callable[..., DynamicScaleResult]:
        """Like ``jax.value_and_grad(fun)``, with loss scaling; see ``DynamicScaleResult``.

        Args:
            fun: returns a scalar loss, or ``(loss, aux)`` with ``has_aux``.
            argnums: which positional argument(s) to differentiate.
            has_aux: whether ``fun`` returns ``(loss, aux)``.
            axis_name: a mapped axis (``shard_map``/``pmap``) over which to ``pmean`` the
                gradients. Not needed with jit + shardings (the loss is already global).
        """

        def scaled(*args: Any) -> tuple[jax.Array, Any]:
            out = fun(*args)
            loss = out[0] if has_aux else out
            scale = jnp.asarray(self.scale, jnp.float32)
            return jnp.asarray(loss, jnp.float32) * scale, out

        grad_fn = jax.value_and_grad(scaled, argnums=argnums, has_aux=True)

        @functools.wraps(fun)
        def run(*args: Any) -> DynamicScaleResult:
            (_, value), grad = grad_fn(*args)
            scale = jnp.asarray(self.scale, jnp.float32)
            grad = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32) / scale, grad)
            if axis_name is not None:
                grad = jax.lax.pmean(grad, axis_name)
            leaves = [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grad)]
            finite = jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
            fin_steps = jnp.asarray(self.fin_steps, jnp.int32)
            grow = fin_steps == self.growth_interval
            factor = jnp.where(finite, jnp.where(grow, self.growth_factor, 1.0),
                               self.backoff_factor)
            new = self.replace(  # type: ignore[attr-defined]
                fin_steps=jnp.where(grow | ~finite, 0, fin_steps + 1).astype(jnp.int32),
                scale=scale * factor.astype(jnp.float32))
            return DynamicScaleResult(new, finite, value, grad)

        return run
