"""Learning-rate schedules with the pre-release ``flax.training.lr_schedule`` names.

Each factory returns ``fn(step) -> lr``, a float32 jnp computation (``step`` may be traced,
so the schedule can live inside a jitted train step). Warm-up lengths are in epochs: with
``warmup_length > 0`` the rate is multiplied by ``min(1, step / warmup_length /
steps_per_epoch)``. For new code, ``flaxen.optim.schedules`` has the optax-style ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flaxen.errors import FlaxenError

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]


def _check(name: str, steps_per_epoch: float, warmup_length: float) -> None:
    if not steps_per_epoch > 0:
        raise FlaxenError(f"{name}: steps_per_epoch must be > 0, got {steps_per_epoch!r}.")
    if not warmup_length >= 0:
        raise FlaxenError(f"{name}: warmup_length must be >= 0 (epochs), got "
                          f"{warmup_length!r}.")


def _warmup(lr: jax.Array, step: jax.Array, steps_per_epoch: float,
            warmup_length: float) -> jax.Array:
    if warmup_length > 0.0:
        lr = lr * jnp.minimum(1.0, step / float(warmup_length) / float(steps_per_epoch))
    return lr


def create_constant_learning_rate_schedule(base_learning_rate: float, steps_per_epoch: float,
                                           warmup_length: float = 0.0) -> Schedule:
    """``base_learning_rate``, after an optional linear warm-up of ``warmup_length`` epochs."""
    _check("create_constant_learning_rate_schedule", steps_per_epoch, warmup_length)

    def fn(step: jax.typing.ArrayLike) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        return _warmup(jnp.full((), base_learning_rate, jnp.float32), step, steps_per_epoch,
                       warmup_length)

    return fn


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
    _check("create_stepped_learning_rate_schedule", steps_per_epoch, warmup_length)
    if any(len(s) != 2 for s in lr_sched_steps):
        raise FlaxenError(f"lr_sched_steps must be [[epoch, factor], ...], got "
                          f"{lr_sched_steps!r}.")
    bounds = np.round(np.array([s[0] for s in lr_sched_steps], np.float64)
                      * steps_per_epoch).astype(np.float32)
    values = (np.array([1.0] + [s[1] for s in lr_sched_steps], np.float64)
              * base_learning_rate).astype(np.float32)

    def fn(step: jax.typing.ArrayLike) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        index = jnp.sum(jnp.asarray(bounds) < step)
        return _warmup(jnp.asarray(values)[index], step, steps_per_epoch, warmup_length)

    return fn


def create_cosine_learning_rate_schedule(base_learning_rate: float, steps_per_epoch: float,
                                         halfcos_epochs: float,
                                         warmup_length: float = 0.0) -> Schedule:
    """``base * (0.5 + 0.5 * cos(pi * step / (halfcos_epochs * steps_per_epoch)))``."""
    _check("create_cosine_learning_rate_schedule", steps_per_epoch, warmup_length)
    if not halfcos_epochs > 0:
        raise FlaxenError(f"halfcos_epochs must be > 0, got {halfcos_epochs!r}.")
    half_wavelength = float(halfcos_epochs) * float(steps_per_epoch)

    def fn(step: jax.typing.ArrayLike) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        scale = jnp.cos(step * jnp.pi / half_wavelength) * 0.5 + 0.5
        return _warmup(base_learning_rate * scale, step, steps_per_epoch, warmup_length)

    return fn
