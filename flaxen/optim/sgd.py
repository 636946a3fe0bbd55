"""Plain gradient descent: ``p <- p - learning_rate * g``.

optax mapping: ``optax.sgd(learning_rate)`` (no momentum). Identical to pre-release Flax.
"""

from __future__ import annotations

from typing import Any

import optax

from flaxen import struct
from flaxen.optim.base import OptimizerDef


@struct.dataclass
class _GradientDescentHyperParams:
    learning_rate: Any


class GradientDescent(OptimizerDef):
    """Gradient descent. Alias: ``SGD``.

    Args:
        learning_rate: step size (a float >= 0); required, here or per step.
    """

    def __init__(self, learning_rate: float | None = None):
        super().__init__(_GradientDescentHyperParams(learning_rate))

    def transform(self, hyper_params: Any) -> optax.GradientTransformation:
        return optax.sgd(hyper_params.learning_rate)


SGD = GradientDescent
