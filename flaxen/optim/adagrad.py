"""Adagrad (Duchi et al., 2011).

Pre-release Flax: ``G <- G + g^2`` (``G`` starts at 0), ``p <- p - lr * g / (sqrt(G) + eps)``.

flaxen follows optax: ``optax.adagrad(lr, initial_accumulator_value, eps)``, i.e.
``p <- p - lr * g / sqrt(G + eps)`` (``eps`` *inside* the square root; a ``G`` of exactly 0
gives a zero step). ``initial_accumulator_value`` defaults to 0 as in Flax (optax's own
default is 0.1), and ``eps`` keeps Flax's default 1e-8 (optax: 1e-7).
"""

from __future__ import annotations

from typing import Any

import optax

from flaxen import struct
from flaxen.optim.base import OptimizerDef


@struct.dataclass
class _AdagradHyperParams:
    learning_rate: Any
    eps: Any
    initial_accumulator_value: Any


class Adagrad(OptimizerDef):
    """Adagrad.

    Args:
        learning_rate: step size (float >= 0); required, here or per step.
        eps: added to the accumulator inside the square root (default 1e-8).
        initial_accumulator_value: starting value of ``G`` (default 0; fixed at
            construction, since it only enters the initial state).
    """

    _static_names = ("initial_accumulator_value",)
    _nonnegative_names = ("learning_rate", "eps", "initial_accumulator_value")

    def __init__(self, learning_rate: float | None = None, eps: float = 1e-8,
                 initial_accumulator_value: float = 0.0):
        super().__init__(_AdagradHyperParams(learning_rate, eps, initial_accumulator_value))

    def transform(self, hyper_params: Any) -> optax.GradientTransformation:
        hp = hyper_params
        return optax.adagrad(hp.learning_rate, eps=hp.eps,
                             initial_accumulator_value=self.hyper_params.initial_accumulator_value)
