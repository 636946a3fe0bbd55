"""RMSProp (Tieleman & Hinton, 2012), without momentum or centering.

Pre-release Flax, kept exactly: ``v <- beta2 * v + (1 - beta2) * g^2`` (``v`` starts at 0),
``p <- p - lr * g / (sqrt(v) + eps)``; no bias correction.

optax mapping: ``optax.rmsprop(lr, decay=beta2, eps=eps, initial_scale=0.0,
eps_in_sqrt=False)`` (optax's default ``eps_in_sqrt=True`` would put ``eps`` inside the
square root; flaxen keeps Flax's placement).
"""

from __future__ import annotations

from typing import Any

import optax

from flaxen import struct
from flaxen.optim.base import OptimizerDef


@struct.dataclass
class _RMSPropHyperParams:
    learning_rate: Any
    beta2: Any
    eps: Any


class RMSProp(OptimizerDef):
    """RMSProp.

    Args:
        learning_rate: step size (float >= 0); required, here or per step.
        beta2: decay of the squared-gradient average (default 0.9).
        eps: added to ``sqrt(v)`` in the denominator (default 1e-8).
    """

    _nonnegative_names = ("learning_rate", "beta2", "eps")

    def __init__(self, learning_rate: float | None = None, beta2: float = 0.9,
                 eps: float = 1e-8):
        super().__init__(_RMSPropHyperParams(learning_rate, beta2, eps))

    def transform(self, hyper_params: Any) -> optax.GradientTransformation:
        hp = hyper_params
        return optax.rmsprop(hp.learning_rate, decay=hp.beta2, eps=hp.eps, initial_scale=0.0,
                             eps_in_sqrt=False)
