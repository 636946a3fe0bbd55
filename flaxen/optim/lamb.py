"""LAMB: layer-wise adaptive moments for large batches (You et al., 2019).

Pre-release Flax: Adam's bias-corrected moments, ``u = m_hat / (sqrt(v_hat) + eps)``,
``u <- u + wd * p``, ``trust = |p| / |u|`` (1 only when both norms are 0), and
``p <- p - trust * lr * u``.

flaxen follows optax: ``optax.lamb(lr, b1=beta1, b2=beta2, eps, weight_decay)`` =
``chain(scale_by_adam, add_decayed_weights(wd), scale_by_trust_ratio(),
scale_by_learning_rate(lr))``. Difference: optax uses a trust ratio of 1 when *either* norm
is 0, so a zero-initialised leaf (a bias) does move; in pre-release Flax its trust ratio
was 0 and it never moved (a known quirk, never fixed there).
"""

from __future__ import annotations

from typing import Any

import optax

from flaxen import struct
from flaxen.optim.base import OptimizerDef


@struct.dataclass
class _LAMBHyperParams:
    learning_rate: Any
    beta1: Any
    beta2: Any
    weight_decay: Any
    eps: Any


class LAMB(OptimizerDef):
    """LAMB. Note the argument order of pre-release Flax: ``weight_decay`` before ``eps``.

    Args:
        learning_rate: step size (float >= 0); required, here or per step.
        beta1: decay of the gradient average (default 0.9).
        beta2: decay of the squared-gradient average (default 0.999).
        weight_decay: added to the Adam direction before the trust ratio (default 0).
        eps: added to ``sqrt(v_hat)`` (default 1e-6).
    """

    _nonnegative_names = ("learning_rate", "beta1", "beta2", "weight_decay", "eps")

    def __init__(self, learning_rate: float | None = None, beta1: float = 0.9,
                 beta2: float = 0.999, weight_decay: float = 0.0, eps: float = 1e-6):
        super().__init__(_LAMBHyperParams(learning_rate, beta1, beta2, weight_decay, eps))

    def transform(self, hyper_params: Any) -> optax.GradientTransformation:
        hp = hyper_params
        return optax.lamb(hp.learning_rate, b1=hp.beta1, b2=hp.beta2, eps=hp.eps,
                          weight_decay=hp.weight_decay)
