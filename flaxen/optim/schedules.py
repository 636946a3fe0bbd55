"""Learning-rate schedules: ``schedule(step) -> float32 scalar`` (jnp), usable under jit.

Each is a thin wrapper over ``optax.schedules`` (or a product of them). Pass the value per
step, which does not recompile::

    lr_fn = optim.schedules.warmup_cosine(peak_value=0.1, warmup_steps=100, decay_steps=1000)
    optimizer = optimizer.apply_gradient(grads, learning_rate=lr_fn(optimizer.state.step))

Compose with ``join`` (one schedule after another) and ``multiply`` (pointwise product).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from flaxen import errors

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]


def _f32(fn: Callable) -> Schedule:
    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        # optax mixes Python floats with the int step: fine only under standard promotion.
        with jax.numpy_dtype_promotion("standard"):
            return jnp.asarray(fn(step), jnp.float32)

    return schedule


def _check_steps(name: str, **steps: int) -> None:
    for key, value in steps.items():
        if not isinstance(value, int) or value < 0:
            raise errors.HyperParamError(f"schedules.{name}", key,
                                         f"must be an int >= 0, got {value!r}")


def constant(value: float) -> Schedule:
    """``value`` at every step."""
    return _f32(optax.constant_schedule(value))


def linear_warmup(peak_value: float, warmup_steps: int, init_value: float = 0.0) -> Schedule:
    """Linear from ``init_value`` at step 0 to ``peak_value`` at ``warmup_steps``, then flat."""
    _check_steps("linear_warmup", warmup_steps=warmup_steps)
    return _f32(optax.linear_schedule(init_value, peak_value, warmup_steps))


def cosine_decay(init_value: float, decay_steps: int, alpha: float = 0.0) -> Schedule:
    """``init_value * ((1 - alpha) * (1 + cos(pi * t / decay_steps)) / 2 + alpha)``, t capped."""
    _check_steps("cosine_decay", decay_steps=decay_steps)
    return _f32(optax.cosine_decay_schedule(init_value, decay_steps, alpha))


def step_decay(init_value: float, boundaries: Sequence[int],
               factor: float | Sequence[float] = 0.1) -> Schedule:
    """Multiplies the value by ``factor`` at each boundary step (one factor or one each).

    Example: ``step_decay(0.1, [30 * spe, 60 * spe, 80 * spe])`` is ImageNet's schedule.
    """
    factors = [factor] * len(boundaries) if isinstance(factor, int | float) else list(factor)
    if len(factors) != len(boundaries):
        raise errors.HyperParamError("schedules.step_decay", "factor", f"needs one value per "
                                     f"boundary ({len(boundaries)}), got {len(factors)}")
    _check_steps("step_decay", **{f"boundaries[{i}]": b for i, b in enumerate(boundaries)})
    return _f32(optax.piecewise_constant_schedule(init_value, dict(zip(boundaries, factors))))


def warmup_cosine(peak_value: float, warmup_steps: int, decay_steps: int,
                  init_value: float = 0.0, end_value: float = 0.0) -> Schedule:
    """Linear warm-up to ``peak_value``, then cosine to ``end_value`` at ``decay_steps``.

    ``decay_steps`` counts from step 0 and includes the warm-up (optax's convention).
    """
    _check_steps("warmup_cosine", warmup_steps=warmup_steps, decay_steps=decay_steps)
    return _f32(optax.warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps,
                                                   decay_steps, end_value))


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """``schedules[i]`` from ``boundaries[i-1]``; each sees the step minus its boundary."""
    if len(boundaries) != len(schedules) - 1:
        raise errors.HyperParamError("schedules.join", "boundaries", f"needs "
                                     f"{len(schedules) - 1} entries, got {len(boundaries)}")
    return _f32(optax.join_schedules(list(schedules), list(boundaries)))


def multiply(*schedules: Schedule) -> Schedule:
    """The pointwise product, e.g. a warm-up factor times a step decay."""

    def product(step: jax.typing.ArrayLike) -> jax.Array:
        out = jnp.ones((), jnp.float32)
        for s in schedules:
            out = out * jnp.asarray(s(step), jnp.float32)
        return out

    return product
