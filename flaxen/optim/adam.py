"""Adam, with optional AdamW-style decoupled weight decay.

Update (pre-release Flax, kept exactly): ``m <- b1 m + (1 - b1) g``,
``v <- b2 v + (1 - b2) g^2``, bias-corrected ``m_hat``, ``v_hat`` with ``t = step + 1``,
``p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)``: the decay is decoupled
from the moments and scaled by the learning rate (the docstring's "AdamW style weight decay
rate (relative to learning rate)").

optax mapping: ``optax.adam(lr, b1=beta1, b2=beta2, eps=eps)`` when ``weight_decay == 0``,
else ``optax.adamw(lr, b1=beta1, b2=beta2, eps=eps, weight_decay=weight_decay)``, which
computes exactly the rule above (note optax's own default ``weight_decay=1e-4`` is not
used: flaxen's default is 0, as in pre-release Flax).
"""

from __future__ import annotations

from typing import Any

import optax

from flaxen import struct
from flaxen.optim.base import OptimizerDef


@struct.dataclass
class _AdamHyperParams:
    learning_rate: Any
    beta1: Any
    beta2: Any
    eps: Any
    weight_decay: Any


class Adam(OptimizerDef):
    """Adam (Kingma & Ba), with AdamW-style weight decay relative to the learning rate.

    Args:
        learning_rate: step size (float >= 0); required, here or per step.
        beta1: decay of the gradient average (default 0.9).
        beta2: decay of the squared-gradient average (default 0.999).
        eps: added to ``sqrt(v_hat)`` in the denominator (default 1e-8).
        weight_decay: decoupled decay, multiplied by the learning rate (default 0; when
            created as 0 it cannot be set per step).
    """

    _switch_names = ("weight_decay",)
    _nonnegative_names = ("learning_rate", "beta1", "beta2", "eps", "weight_decay")

    def __init__(self, learning_rate: float | None = None, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(_AdamHyperParams(learning_rate, beta1, beta2, eps, weight_decay))

    def transform(self, hyper_params: Any) -> optax.GradientTransformation:
        hp = hyper_params
        if self.hyper_params.weight_decay == 0:
            return optax.adam(hp.learning_rate, b1=hp.beta1, b2=hp.beta2, eps=hp.eps)
        return optax.adamw(hp.learning_rate, b1=hp.beta1, b2=hp.beta2, eps=hp.eps,
                           weight_decay=hp.weight_decay)
