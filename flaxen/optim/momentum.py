"""Heavy-ball (and Nesterov) momentum.

Update (pre-release Flax, kept exactly): ``g <- g + weight_decay * p`` (L2 added to the
gradient, only when ``weight_decay != 0``), ``m <- beta * m + g``, direction
``d = g + beta * m`` (nesterov) or ``d = m``, and ``p <- p - learning_rate * d``.

optax mapping: ``chain(add_decayed_weights(weight_decay), trace(beta, nesterov),
scale_by_learning_rate(learning_rate))``; without weight decay this is exactly
``optax.sgd(learning_rate, momentum=beta, nesterov=nesterov)``.
"""

from __future__ import annotations

from typing import Any

import optax

from flaxen import struct
from flaxen.optim.base import OptimizerDef


@struct.dataclass
class _MomentumHyperParams:
    learning_rate: Any
    beta: Any
    weight_decay: Any
    nesterov: bool


class Momentum(OptimizerDef):
    """SGD with momentum; the momentum buffer starts at zero, no dampening.

    Args:
        learning_rate: step size (float >= 0); required, here or per step.
        beta: momentum coefficient (default 0.9).
        weight_decay: L2 coefficient added to the gradient before the momentum (default 0;
            when created as 0 it cannot be set per step).
        nesterov: Nesterov momentum (default False; fixed at construction).
    """

    _static_names = ("nesterov",)
    _switch_names = ("weight_decay",)
    _nonnegative_names = ("learning_rate", "beta", "weight_decay")

    def __init__(self, learning_rate: float | None = None, beta: float = 0.9,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(_MomentumHyperParams(learning_rate, beta, weight_decay, nesterov))

    def transform(self, hyper_params: Any) -> optax.GradientTransformation:
        hp = hyper_params
        core = optax.sgd(hp.learning_rate, momentum=hp.beta, nesterov=self.hyper_params.nesterov)
        if self.hyper_params.weight_decay == 0:
            return core
        return optax.chain(optax.add_decayed_weights(hp.weight_decay), core)
