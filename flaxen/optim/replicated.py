"""``optimizer.replicate(devices=...)``: the January-2020 ``ReplicatedOptimizer`` for pmap.

The pre-release ``Optimizer.replicate(devices=None, axis_name='batch')`` stacked one copy
of the optimizer per device (for ``jax.pmap``) and wrapped its definition so that
``apply_gradient`` averaged the gradients over ``axis_name`` itself. flaxen keeps that
form for old programs; a plain ``optimizer.replicate()`` / ``replicate(mesh)`` is the
Mesh replication flaxen teaches (see ``docs/parallelism.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from flaxen import errors
from flaxen.optim.base import OptimizerDef, OptimizerState


class ReplicatedOptimizer(OptimizerDef):
    """Wraps an ``OptimizerDef``: gradients are averaged over ``axis_name`` (inside pmap)
    before the wrapped definition applies them. Deprecated in the pre-release in favour of
    ``jax_utils.replicate(optimizer)`` plus an explicit ``lax.pmean(grads, 'batch')``."""

    def __init__(self, optimizer_def: OptimizerDef,
                 devices: Sequence[jax.Device] | None = None, axis_name: str = "batch"):
        self.optimizer_def = optimizer_def
        self.devices = None if devices is None else tuple(devices)
        self.axis_name = axis_name
        self.hyper_params = optimizer_def.hyper_params
        self._hash = hash((type(self), optimizer_def, self.devices, axis_name))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ReplicatedOptimizer)
                and self.optimizer_def == other.optimizer_def
                and self.devices == other.devices and self.axis_name == other.axis_name)

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"ReplicatedOptimizer({self.optimizer_def!r}, axis_name={self.axis_name!r})"

    def update_hyper_params(self, **overrides: Any) -> Any:
        return self.optimizer_def.update_hyper_params(**overrides)

    def init_state(self, params: Any) -> OptimizerState:
        return self.optimizer_def.init_state(params)

    def apply_gradient(self, hyper_params: Any, params: Any, state: OptimizerState,
                       grads: Any) -> tuple[Any, OptimizerState]:
        try:
            grads = jax.lax.pmean(grads, self.axis_name)
        except NameError as e:
            raise errors.ReplicationError(
                f"This optimizer was replicated for pmap (`optimizer.replicate(devices=..., "
                f"axis_name={self.axis_name!r})`), so apply_gradient averages gradients over "
                f"the mapped axis {self.axis_name!r}; expected to run inside "
                f"`jax.pmap(..., axis_name={self.axis_name!r})`, got no such axis. Call it "
                "inside that pmap, or use `optimizer.unreplicate()` to get a plain one.") from e
        return self.optimizer_def.apply_gradient(hyper_params, params, state, grads)
