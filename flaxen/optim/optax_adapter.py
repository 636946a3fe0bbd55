"""Bring any optax ``GradientTransformation``: ``optim.Optax(optax.adamw(1e-3))``.

The transformation's ``init`` gives ``state.param_states``; ``update`` followed by
``optax.apply_updates`` is each step. Hyper-parameters per step work when the
transformation was built with ``optax.inject_hyperparams``: ``apply_gradient(grads,
learning_rate=lr)`` writes ``lr`` into the injected hyper-parameters (where it stays for
later steps, as in optax) before the update. The injected state is found inside wrappers
too (``MultiSteps``, ``chain``, ``masked``, ``multi_transform``, ...); a name injected in
more than one place is refused as ambiguous.

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

import jax.numpy as jnp
import optax

from flaxen import errors, struct
from flaxen.optim.base import OptimizerDef, OptimizerState
from flaxen.optim.checks import check_nonnegative


@struct.dataclass
class _OptaxHyperParams:
    """The transformation (static) and the values to write into its injected
    hyper-parameters before the next update (``(name, value)`` pairs; empty by default)."""

    transformation: Any = struct.field(pytree_node=False)
    injected: tuple[tuple[str, Any], ...] = ()


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

    def update_hyper_params(self, **overrides: Any) -> _OptaxHyperParams:
        """The per-step overrides, to be written into the injected hyper-parameters."""
        hp = overrides.pop("hyper_params", self.hyper_params)
        if not (isinstance(hp, _OptaxHyperParams)
                and hp.transformation is self.hyper_params.transformation):
            raise errors.HyperParamError(
                "Optax", "hyper_params", "cannot replace an optax transformation per step",
                "Create a new `optim.Optax(...)` instead.")
        for name, value in overrides.items():
            if name == "learning_rate":
                check_nonnegative("Optax", name, value)
        return dataclasses.replace(hp, injected=(*hp.injected, *overrides.items()))

    def apply_gradient(self, hyper_params: Any, params: Any, state: OptimizerState,
                       grads: Any) -> tuple[Any, OptimizerState]:
        if hyper_params.injected:
            inner = _set_injected(state.param_states, dict(hyper_params.injected))
            state = dataclasses.replace(state, param_states=inner)
        return super().apply_gradient(hyper_params, params, state, grads)


# -- Finding injected hyper-parameters inside wrapper states ------------------------------
#
# Wrappers keep the wrapped transformation's state inside their own: `MultiSteps` in
# `inner_opt_state`, `masked` in `inner_state`, `chain` as a tuple with one state per link,
# `multi_transform` in a dict per label. All are tuples, named tuples or dicts, so one walk
# over those finds every `inject_hyperparams` state (a named tuple with a `hyperparams` dict)
# at any depth, whatever the wrapper.


def _is_injected(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields") and isinstance(
        getattr(node, "hyperparams", None), dict)


def _children(node: Any) -> list[tuple[str, Any]]:
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return [(f".{name}", value) for name, value in zip(node._fields, node)]
    if isinstance(node, (tuple, list)):
        return [(f"[{i}]", value) for i, value in enumerate(node)]
    if isinstance(node, dict):
        return [(f"[{key!r}]", value) for key, value in node.items()]
    return []


def _find_injected(node: Any, path: str = "state") -> list[tuple[str, dict[str, Any]]]:
    """``(path, hyperparams)`` of every injected state below ``node``, in walk order."""
    if _is_injected(node):
        return [(path, node.hyperparams)]
    return [found for suffix, child in _children(node)
            for found in _find_injected(child, path + suffix)]


def _replace_injected(node: Any, overrides: dict[str, Any]) -> Any:
    if _is_injected(node):
        mine = {k: v for k, v in overrides.items() if k in node.hyperparams}
        if not mine:
            return node
        new = {k: jnp.asarray(v, dtype=jnp.result_type(node.hyperparams[k]))
               for k, v in mine.items()}
        return node._replace(hyperparams={**node.hyperparams, **new})
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return type(node)(*(_replace_injected(child, overrides) for child in node))
    if isinstance(node, (tuple, list)):
        return type(node)(_replace_injected(child, overrides) for child in node)
    if isinstance(node, dict):
        return {key: _replace_injected(child, overrides) for key, child in node.items()}
    return node


def _set_injected(opt_state: Any, overrides: dict[str, Any]) -> Any:
    """``opt_state`` with each override written into the one injected state that has it.

    Raises:
        HyperParamError: no injected state has the name, or several do (for instance two
            ``inject_hyperparams`` links of a ``chain`` or ``multi_transform``, each with its
            own ``learning_rate``): which one to set would be a guess.
    """
    found = _find_injected(opt_state)
    for name in overrides:
        holders = [path for path, injected in found if name in injected]
        if not found:
            raise errors.HyperParamError(
                "Optax", name, "cannot be set per step: the optax state (searched through "
                "wrappers such as MultiSteps, chain, masked and multi_transform) holds no "
                "injected hyper-parameters",
                "Build the transformation with `optax.inject_hyperparams`, e.g. "
                "`optax.MultiSteps(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3), "
                "every_k_schedule=4)`.")
        if not holders:
            names = sorted({k for _, injected in found for k in injected})
            raise errors.HyperParamError(
                "Optax", name, "is not an injected hyper-parameter",
                f"Injected (found at {', '.join(p for p, _ in found)}): {', '.join(names)}.")
        if len(holders) > 1:
            raise errors.HyperParamError(
                "Optax", name, f"is injected in {len(holders)} places ({', '.join(holders)}), "
                "so a single per-step value is ambiguous",
                "Inject it once, around the whole transformation (`optax.inject_hyperparams` "
                "of a function that builds the chain), or use an optax schedule per part.")
    return _replace_injected(opt_state, overrides)
