"""LARS: layer-wise adaptive rate scaling (You et al., 2017), with momentum.

Pre-release Flax (after its 2020-09 fix): ``trust = tc * |p| / (|g| + wd * |p| + eps)``
(1 when ``|p|`` or ``|g|`` is 0), ``g <- g + wd * p``, ``m <- beta * m + lr * trust * g``,
``p <- p - m`` (Nesterov: ``p <- p - (lr * trust * g + beta * m)``). Norms are over the
whole leaf.

flaxen follows optax: ``optax.lars(lr, weight_decay, trust_coefficient, eps, momentum=beta,
nesterov)`` = ``chain(add_decayed_weights(wd), scale_by_trust_ratio(tc, eps),
scale_by_learning_rate(lr), trace(beta, nesterov))``. The one difference: optax's trust
ratio divides by ``|g + wd * p|`` (the norm of the decayed gradient) instead of Flax's
``|g| + wd * |p|``; the two agree when ``weight_decay == 0``. Weight decay and the trust
ratio apply to every leaf (optax masks ``True``).
"""

from __future__ import annotations

from typing import Any

import optax

from flaxen import struct
from flaxen.optim.base import OptimizerDef


@struct.dataclass
class _LARSHyperParams:
    learning_rate: Any
    beta: Any
    weight_decay: Any
    trust_coefficient: Any
    eps: Any
    nesterov: bool


class LARS(OptimizerDef):
    """LARS with momentum; the learning rate is folded into the momentum buffer.

    Args:
        learning_rate: step size (float >= 0); required, here or per step.
        beta: momentum coefficient (default 0.9).
        weight_decay: L2 added to the gradient before the trust ratio (default 0).
        trust_coefficient: ``tc`` in the trust ratio (default 0.001).
        eps: added to the trust ratio's denominator (default 0).
        nesterov: Nesterov momentum (default False; fixed at construction).
    """

    _static_names = ("nesterov",)
    _nonnegative_names = ("learning_rate", "beta", "weight_decay", "trust_coefficient", "eps")

    def __init__(self, learning_rate: float | None = None, beta: float = 0.9,
                 weight_decay: float = 0.0, trust_coefficient: float = 0.001,
                 eps: float = 0.0, nesterov: bool = False):
        super().__init__(_LARSHyperParams(learning_rate, beta, weight_decay,
                                          trust_coefficient, eps, nesterov))

    def transform(self, hyper_params: Any) -> optax.GradientTransformation:
        hp = hyper_params
        return optax.lars(hp.learning_rate, weight_decay=hp.weight_decay,
                          trust_coefficient=hp.trust_coefficient, eps=hp.eps,
                          momentum=hp.beta, nesterov=self.hyper_params.nesterov)
