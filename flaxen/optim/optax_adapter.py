"""Bring any optax ``GradientTransformation``: ``optim.Optax(optax.adamw(1e-3))``.

The transformation's ``init`` gives ``state.param_states``; ``update`` followed by
``optax.apply_updates`` is each step. Hyper-parameters per step work when the
transformation was built with ``optax.inject_hyperparams``: ``apply_gradient(grads,
learning_rate=lr)`` writes ``lr`` into the injected hyper-parameters (where it stays for
later steps, as in optax) before the update.

Example:
    >>> import jax.numpy as jnp, optax
    >>> from flaxen import optim
    >>> tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    >>> opt = optim.Optax(tx).create({"w": jnp.ones(2)})
    >>> opt = opt.apply_gradient({"w": jnp.ones(2)}, learning_rate=1e-2)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from flaxen import errors, struct
from flaxen.optim.base import OptimizerDef, OptimizerState, _is_concrete


@struct.dataclass
class _OptaxHyperParams:
    transformation: Any = struct.field(pytree_node=False)


class Optax(OptimizerDef):
    """Wraps an optax ``GradientTransformation`` as an ``OptimizerDef``.

    Args:
        transformation: any optax transformation (``optax.chain(...)`` etc.). Two ``Optax``
            definitions are equal when they wrap the same transformation object, so create
            it once (jit caches on it).
    """

    _needs_learning_rate = False

    def __init__(self, transformation: optax.GradientTransformation):
        if not (hasattr(transformation, "init") and hasattr(transformation, "update")):
            raise errors.HyperParamError(
                "Optax", "transformation", f"must be an optax GradientTransformation, got "
                f"{type(transformation).__name__}", "For example `optim.Optax(optax.sgd(0.1))`.")
        super().__init__(_OptaxHyperParams(transformation))

    def transform(self, hyper_params: Any) -> optax.GradientTransformation:
        return self.hyper_params.transformation

    def update_hyper_params(self, **overrides: Any) -> Any:
        """Returns the overrides themselves (applied to the injected hyper-parameters)."""
        if overrides.get("hyper_params", self.hyper_params) is self.hyper_params:
            overrides.pop("hyper_params", None)  # MultiOptimizer passes our own defaults
        if "hyper_params" in overrides:
            raise errors.HyperParamError(
                "Optax", "hyper_params", "cannot replace an optax transformation per step",
                "Create a new `optim.Optax(...)` instead.")
        for name, value in overrides.items():
            if name == "learning_rate" and _is_concrete(value) and jnp.any(
                    jnp.asarray(value) < 0):
                raise errors.HyperParamError(
                    "Optax", name, f"must be >= 0, got {value}",
                    "Optimizers minimise the loss; to maximise, negate the loss.")
        return overrides

    def apply_gradient(self, hyper_params: Any, params: Any, state: OptimizerState,
                       grads: Any) -> tuple[Any, OptimizerState]:
        inner = state.param_states
        if hyper_params:
            injected = getattr(inner, "hyperparams", None)
            if not isinstance(injected, dict):
                raise errors.HyperParamError(
                    "Optax", next(iter(hyper_params)), "cannot be set per step: the wrapped "
                    "transformation has no injected hyper-parameters",
                    "Build it with `optax.inject_hyperparams(optax.adam)(learning_rate=...)`.")
            unknown = sorted(set(hyper_params) - set(injected))
            if unknown:
                raise errors.HyperParamError(
                    "Optax", unknown[0], "is not an injected hyper-parameter",
                    f"Injected: {', '.join(sorted(injected))}.")
            new = {k: jnp.asarray(v, dtype=jax.numpy.result_type(injected[k]))
                   for k, v in hyper_params.items()}
            inner = inner._replace(hyperparams={**injected, **new})
        state = dataclasses.replace(state, param_states=inner)
        return super().apply_gradient(None, params, state, grads)
