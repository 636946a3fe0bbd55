"""Learning-rate schedules: ``schedule(step) -> float32 scalar`` (jnp), usable under jit.

Each is a thin wrapper over ``optax.schedules`` (or a product of them). Pass the value per
step, which does not recompile::

    lr_fn = optim.schedules.warmup_cosine(peak_value=0.1, warmup_steps=100, decay_steps=1000)
    optimizer = optimizer.apply_gradient(grads, learning_rate=lr_fn(optimizer.state.step))

Compose with ``join`` (one schedule after another) and ``multiply`` (pointwise product).

The pre-release ``flax.training.lr_schedule`` factories (``create_*_learning_rate_schedule``,
warm-up lengths in epochs) live here too, built from the same pieces;
``flaxen.training.lr_schedule`` re-exports them under their pre-release import path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
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


# -- The pre-release factories (flax.training.lr_schedule) ---------------------------------
#
# Their warm-up multiplies by ``min(1, step / (warmup_length * steps_per_epoch))`` with
# ``warmup_length`` in (possibly fractional) epochs; the stepped schedule's factors are
# absolute and a boundary takes effect after its step (``boundary < step``), and the cosine
# is not clamped: these differ from the optax-style schedules above, so they are kept as
# the pre-release wrote them and only share ``constant`` and ``multiply``.


def _check_epochs(name: str, steps_per_epoch: float, warmup_length: float) -> None:
    if not steps_per_epoch > 0:
        raise errors.FlaxenError(f"{name}: steps_per_epoch must be > 0, got "
                                 f"{steps_per_epoch!r}.")
    if not warmup_length >= 0:
        raise errors.FlaxenError(f"{name}: warmup_length must be >= 0 (epochs), got "
                                 f"{warmup_length!r}.")


def _with_warmup(schedule: Schedule, steps_per_epoch: float,
                 warmup_length: float) -> Schedule:
    if not warmup_length > 0.0:
        return schedule
    warmup_steps = float(warmup_length) * float(steps_per_epoch)

    def factor(step: jax.typing.ArrayLike) -> jax.Array:
        return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)

    return multiply(schedule, factor)


def create_constant_learning_rate_schedule(base_learning_rate: float, steps_per_epoch: float,
                                           warmup_length: float = 0.0) -> Schedule:
    """``base_learning_rate``, after an optional linear warm-up of ``warmup_length`` epochs."""
    _check_epochs("create_constant_learning_rate_schedule", steps_per_epoch, warmup_length)
    return _with_warmup(constant(base_learning_rate), steps_per_epoch, warmup_length)


def create_stepped_learning_rate_schedule(base_learning_rate: float, steps_per_epoch: float,
                                          lr_sched_steps: Sequence[Sequence[float]],
                                          warmup_length: float = 0.0) -> Schedule:
    """Piecewise constant: ``base * [1, f1, f2, ...][number of boundaries < step]``.

    Args:
      base_learning_rate: the rate before the first boundary.
      steps_per_epoch: steps in one epoch.
      lr_sched_steps: ``[[epoch, factor], ...]``, e.g. ``[[30, .1], [60, .01]]``; the
        boundary of each is ``round(epoch * steps_per_epoch)``; factors multiply ``base``
        (they are absolute, not cumulative).
      warmup_length: warm-up in epochs.
    """
    _check_epochs("create_stepped_learning_rate_schedule", steps_per_epoch, warmup_length)
    if any(len(s) != 2 for s in lr_sched_steps):
        raise errors.FlaxenError(f"lr_sched_steps must be [[epoch, factor], ...], got "
                                 f"{lr_sched_steps!r}.")
    bounds = np.round(np.array([s[0] for s in lr_sched_steps], np.float64)
                      * steps_per_epoch).astype(np.float32)
    values = (np.array([1.0] + [s[1] for s in lr_sched_steps], np.float64)
              * base_learning_rate).astype(np.float32)

    def stepped(step: jax.typing.ArrayLike) -> jax.Array:
        index = jnp.sum(jnp.asarray(bounds) < jnp.asarray(step, jnp.float32))
        return jnp.asarray(values)[index]

    return _with_warmup(stepped, steps_per_epoch, warmup_length)


def create_cosine_learning_rate_schedule(base_learning_rate: float, steps_per_epoch: float,
                                         halfcos_epochs: float,
                                         warmup_length: float = 0.0) -> Schedule:
    """``base * (0.5 + 0.5 * cos(pi * step / (halfcos_epochs * steps_per_epoch)))``."""
    _check_epochs("create_cosine_learning_rate_schedule", steps_per_epoch, warmup_length)
    if not halfcos_epochs > 0:
        raise errors.FlaxenError(f"halfcos_epochs must be > 0, got {halfcos_epochs!r}.")
    half_wavelength = float(halfcos_epochs) * float(steps_per_epoch)

    def cosine(step: jax.typing.ArrayLike) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        scale = jnp.cos(step * jnp.pi / half_wavelength) * 0.5 + 0.5
        return jnp.asarray(base_learning_rate * scale, jnp.float32)

    return _with_warmup(cosine, steps_per_epoch, warmup_length)
