"""WeightNorm: optimize each weight as a direction and a scale (Salimans & Kingma, 2016).

A wrapper around another optimizer, as in pre-release Flax: ``WeightNorm(optim.Adam(1e-3))``.
A leaf with more than one entry per output unit (``size > shape[-1]``; the output axis is
the last one) is written ``p = scale * direction / (eps + |direction|)``, with norms over
all axes but the last; the wrapped optimizer then updates ``{'direction': ..., 'scale': ...}``
with the gradients (``g`` the gradient of ``p``, ``mult = scale / (eps + |direction|)``):

- ``direction = p / mult``, ``scale = |p| * sign(mult)``;
- ``scale_grad = sum(g * direction)`` over the reduced axes;
- ``direction_grad = mult * (g - scale_grad * direction)`` ``+ wn_decay * direction``.

Other leaves (biases, scalars) go to the wrapped optimizer unchanged. This is pre-release
Flax's rule, written here because optax has no weight-norm reparametrisation; the wrapped
optimizer's own update is optax's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from flaxen import errors, struct
from flaxen.optim.base import OptimizerDef, OptimizerState
from flaxen.optim.checks import check_inexact


@struct.dataclass
class _WeightNormHyperParams:
    inner: Any
    wn_decay: Any
    wn_eps: Any


def _decomposed(p: jax.Array) -> bool:
    return jnp.ndim(p) > 0 and jnp.size(p) > jnp.shape(p)[-1]


def _norm(x: jax.Array) -> jax.Array:
    axes = tuple(range(x.ndim - 1))
    return jnp.sqrt(jnp.sum(x * x, axis=axes, keepdims=True))


class WeightNorm(OptimizerDef):
    """Weight-normalised updates around ``wrapped_optimizer``.

    Args:
        wrapped_optimizer: the ``OptimizerDef`` that updates directions and scales.
        wn_decay: L2 decay added to the direction gradient (default 0).
        wn_eps: added to direction norms (default 1e-8).

    Per-step overrides other than ``wn_decay``/``wn_eps`` (e.g. ``learning_rate``) go to the
    wrapped optimizer.
    """

    def __init__(self, wrapped_optimizer: OptimizerDef, wn_decay: float = 0.0,
                 wn_eps: float = 1e-8):
        if not isinstance(wrapped_optimizer, OptimizerDef):
            raise errors.HyperParamError(
                "WeightNorm", "wrapped_optimizer", f"must be an OptimizerDef, got "
                f"{type(wrapped_optimizer).__name__}", "e.g. `WeightNorm(optim.Adam(1e-3))`.")
        self.wrapped = wrapped_optimizer
        super().__init__(_WeightNormHyperParams(wrapped_optimizer.hyper_params, wn_decay,
                                                wn_eps), (wrapped_optimizer,))

    def update_hyper_params(self, **overrides: Any) -> _WeightNormHyperParams:
        hp = overrides.pop("hyper_params", self.hyper_params)
        own = {k: overrides.pop(k) for k in ("wn_decay", "wn_eps") if k in overrides}
        inner = self.wrapped.update_hyper_params(hyper_params=hp.inner, **overrides)
        return _WeightNormHyperParams(inner, own.get("wn_decay", hp.wn_decay),
                                      own.get("wn_eps", hp.wn_eps))

    def _split(self, params: Any) -> tuple[Any, Any]:
        def direction(p: jax.Array) -> jax.Array:
            return p / _norm(p) if _decomposed(p) else p

        def scale(p: jax.Array) -> Any:
            return _norm(p) if _decomposed(p) else ()

        return jax.tree.map(direction, params), jax.tree.map(scale, params)

    def init_state(self, params: Any) -> OptimizerState:
        check_inexact(type(self).__name__, params)
        eps = self.hyper_params.wn_eps
        directions, scales = self._split(params)
        inner = self.wrapped.init_state({"direction": directions, "scale": scales})
        mults = jax.tree.map(lambda d, s: s / (eps + _norm(d)) if _decomposed(d) else (),
                             directions, scales)
        return OptimizerState(step=jnp.zeros((), jnp.int32),
                              param_states={"inner": inner, "mult": mults})

    def apply_gradient(self, hyper_params: Any, params: Any, state: OptimizerState,
                       grads: Any) -> tuple[Any, OptimizerState]:
        hp = hyper_params
        leaves, treedef = jax.tree.flatten(params)
        g_leaves = treedef.flatten_up_to(grads)  # type: ignore[attr-defined]
        m_leaves = treedef.flatten_up_to(state.param_states["mult"])  # type: ignore[attr-defined]
        rows: list[tuple[Any, Any, Any, Any]] = []  # (direction, scale, their grads) per leaf
        for p, g, mult in zip(leaves, g_leaves, m_leaves):
            if not _decomposed(p):
                rows.append((p, (), g, ()))
                continue
            direction = p / mult
            scale_grad = jnp.sum(g * direction, axis=tuple(range(p.ndim - 1)), keepdims=True)
            d_grad = mult * (g - scale_grad * direction) + hp.wn_decay * direction
            rows.append((direction, _norm(p) * jnp.sign(mult), d_grad, scale_grad))
        tree = lambda xs: jax.tree.unflatten(treedef, list(xs))
        dirs, scales, d_grads, s_grads = zip(*rows) if rows else ((), (), (), ())
        inner_params = {"direction": tree(dirs), "scale": tree(scales)}
        inner_grads = {"direction": tree(d_grads), "scale": tree(s_grads)}
        new_inner, inner_state = self.wrapped.apply_gradient(
            hp.inner, inner_params, state.param_states["inner"], inner_grads)
        new_p, new_m = [], []
        for d, s in zip(treedef.flatten_up_to(new_inner["direction"]),  # type: ignore[attr-defined]
                        treedef.flatten_up_to(new_inner["scale"])):  # type: ignore[attr-defined]
            mult = () if isinstance(s, tuple) else s / (hp.wn_eps + _norm(d))
            new_p.append(d if isinstance(s, tuple) else d * mult)
            new_m.append(mult)
        return tree(new_p), OptimizerState(
            step=state.step + 1, param_states={"inner": inner_state, "mult": tree(new_m)})
