"""Adafactor (Shazeer & Stern, 2018): factored second moments, relative step sizes.

Pre-release Flax v0.2.2 (with its 2020-09 factoring fix) and optax implement the same
algorithm: ``decay_t = 1 - (step + 1) ** -decay_rate``; a leaf with ``ndim >= 2`` whose
second-largest dimension is ``>= min_dim_size_to_factor`` keeps row and column averages of
``g^2 + epsilon1`` instead of a full ``v``; the scaled gradient is clipped to block RMS
``clipping_threshold``, multiplied by ``lr`` and (if ``multiply_by_parameter_scale``) by
``max(RMS(p), epsilon2)``, averaged with momentum ``beta1`` (if set), and
``p <- (1 - weight_decay_rate) * p - u``.

optax mapping: the chain that ``optax.adafactor`` builds, composed here from the same optax
pieces so that Flax's ``epsilon2`` reaches ``scale_by_param_block_rms(min_scale=epsilon2)``
(``optax.adafactor`` fixes it at 1e-3, Flax's default): ``scale_by_factored_rms(factored,
decay_rate, 0, min_dim_size_to_factor, epsilon1)``, ``clip_by_block_rms(clipping_threshold)``,
``scale_by_learning_rate(lr, flip_sign=False)``, ``scale_by_param_block_rms(epsilon2)``,
``ema(beta1, debias=False)``, ``add_decayed_weights(weight_decay_rate)``, ``scale(-1)``.
In both, the weight decay is not multiplied by the learning rate.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from flaxen import struct
from flaxen.optim.base import OptimizerDef


@struct.dataclass
class _AdafactorHyperParams:
    learning_rate: Any
    factored: bool
    multiply_by_parameter_scale: bool
    beta1: Any
    decay_rate: Any
    clipping_threshold: Any
    weight_decay_rate: Any
    min_dim_size_to_factor: int
    epsilon1: Any
    epsilon2: Any


class Adafactor(OptimizerDef):
    """Adafactor with the pre-release Flax signature and defaults.

    Args:
        learning_rate: step size (float >= 0); required, here or per step.
        factored: factor second moments of large matrices (default True; fixed).
        multiply_by_parameter_scale: scale steps by the parameter's RMS (default True; fixed).
        beta1: momentum coefficient, or None for no momentum (default None).
        decay_rate: exponent of the second-moment decay schedule (default 0.8).
        clipping_threshold: block-RMS clipping of the update, or None (default 1.0).
        weight_decay_rate: decoupled decay ``p <- (1 - rate) * p``, or None (default None).
        min_dim_size_to_factor: factor only when the second-largest dim is at least this
            (default 128; fixed).
        epsilon1: added to ``g^2`` (default 1e-30).
        epsilon2: lower bound of the parameter scale (default 1e-3).
    """

    _static_names = ("factored", "multiply_by_parameter_scale", "min_dim_size_to_factor")
    _switch_names = ("beta1", "clipping_threshold", "weight_decay_rate")
    _nonnegative_names = ("learning_rate", "beta1", "decay_rate", "clipping_threshold",
                          "weight_decay_rate", "epsilon1", "epsilon2")

    def __init__(self, learning_rate: float | None = None, factored: bool = True,
                 multiply_by_parameter_scale: bool = True, beta1: float | None = None,
                 decay_rate: float = 0.8, clipping_threshold: float | None = 1.0,
                 weight_decay_rate: float | None = None, min_dim_size_to_factor: int = 128,
                 epsilon1: float = 1e-30, epsilon2: float = 1e-3):
        super().__init__(_AdafactorHyperParams(
            learning_rate, factored, multiply_by_parameter_scale, beta1, decay_rate,
            clipping_threshold, weight_decay_rate, min_dim_size_to_factor, epsilon1, epsilon2))

    def transform(self, hyper_params: Any) -> optax.GradientTransformation:
        hp, fixed = hyper_params, self.hyper_params
        parts = [optax.scale_by_factored_rms(fixed.factored, hp.decay_rate, 0,
                                             fixed.min_dim_size_to_factor, hp.epsilon1)]
        if fixed.clipping_threshold is not None:
            parts.append(optax.clip_by_block_rms(hp.clipping_threshold))
        parts.append(optax.scale_by_learning_rate(hp.learning_rate, flip_sign=False))
        if fixed.multiply_by_parameter_scale:
            parts.append(optax.scale_by_param_block_rms(hp.epsilon2))
        if fixed.beta1 is not None:
            parts.append(optax.ema(hp.beta1, debias=False, accumulator_dtype=jnp.float32))
        if fixed.weight_decay_rate is not None:
            parts.append(optax.add_decayed_weights(hp.weight_decay_rate))
        parts.append(optax.scale(-1))
        return optax.chain(*parts)
