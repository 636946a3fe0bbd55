"""Per-step hyper-parameters through optax wrappers (MultiSteps, chain, masked, ...).

Each flaxen run is compared with the same optax transformation driven by hand, writing the
learning rate into the injected state itself: the params must be bit-identical.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxen import errors, optim

LRS = [0.1, 0.05, 0.2, 0.01, 0.3, 0.02]
PARAMS = {"a": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array([[0.5, -0.5]])}


def _grads(step: int) -> dict[str, jax.Array]:
    key = jax.random.fold_in(jax.random.PRNGKey(0), step)
    ka, kb = jax.random.split(key)
    return {"a": jax.random.normal(ka, (3,)), "b": jax.random.normal(kb, (1, 2))}


def _set_lr(node, lr):
    """The optax state with every injected learning_rate set to ``lr`` (the reference)."""
    if isinstance(node, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)):
        return node._replace(hyperparams={**node.hyperparams,
                                          "learning_rate": jnp.asarray(lr, jnp.float32)})
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return type(node)(*(_set_lr(c, lr) for c in node))
    if isinstance(node, tuple):
        return tuple(_set_lr(c, lr) for c in node)
    if isinstance(node, dict):
        return {k: _set_lr(c, lr) for k, c in node.items()}
    return node


def _adam():
    return optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)


WRAPPED = {
    "multi_steps": lambda: optax.MultiSteps(_adam(), every_k_schedule=2),
    "chain": lambda: optax.chain(optax.clip_by_global_norm(1.0), _adam()),
    "masked": lambda: optax.masked(_adam(), {"a": True, "b": False}),
    "multi_steps_of_chain": lambda: optax.MultiSteps(
        optax.chain(optax.scale_by_rms(), optax.inject_hyperparams(optax.sgd)(
            learning_rate=1.0, momentum=0.9)), every_k_schedule=3),
    "multi_transform": lambda: optax.multi_transform(
        {"inj": _adam(), "fixed": optax.sgd(0.1)}, {"a": "inj", "b": "fixed"}),
}


@pytest.mark.parametrize("name", sorted(WRAPPED))
def test_same_updates_as_optax(name):
    tx = WRAPPED[name]()
    opt = optim.Optax(tx).create(PARAMS)
    ref_params, ref_state = PARAMS, tx.init(PARAMS)
    for step, lr in enumerate(LRS):
        grads = _grads(step)
        opt = opt.apply_gradient(grads, learning_rate=lr)
        ref_state = _set_lr(ref_state, lr)
        # optax is written for standard dtype promotion (the suite runs strict).
        with jax.numpy_dtype_promotion("standard"):
            updates, ref_state = tx.update(grads, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)
    for key in PARAMS:
        np.testing.assert_array_equal(np.asarray(opt.target[key]), np.asarray(ref_params[key]))
    assert not np.array_equal(np.asarray(opt.target["a"]), np.asarray(PARAMS["a"]))


def test_per_step_lr_under_jit_does_not_retrace():
    traces = []

    @jax.jit
    def step(opt, grads, lr):
        traces.append(1)
        return opt.apply_gradient(grads, learning_rate=lr)

    opt = optim.Optax(WRAPPED["multi_steps"]()).create(PARAMS)
    for i, lr in enumerate(LRS):
        opt = step(opt, _grads(i), jnp.float32(lr))
    assert len(traces) == 1
    inner = opt.state.param_states.inner_opt_state
    assert float(inner.hyperparams["learning_rate"]) == np.float32(LRS[-1])


def test_optimize_passes_lr_through_wrappers():
    tx = WRAPPED["multi_steps"]()
    opt = optim.Optax(tx).create(PARAMS)
    opt, _ = opt.optimize(lambda p: jnp.sum(p["a"] ** 2) + jnp.sum(p["b"]), learning_rate=0.5)
    inner = opt.state.param_states.inner_opt_state
    assert float(inner.hyperparams["learning_rate"]) == 0.5


def test_name_injected_twice_is_ambiguous():
    tx = optax.chain(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), _adam())
    opt = optim.Optax(tx).create(PARAMS)
    with pytest.raises(errors.HyperParamError,
                       match=r"injected in 2 places.*state\[0\].*state\[1\]"):
        opt.apply_gradient(_grads(0), learning_rate=0.1)


def test_unknown_and_missing_names_say_what_was_found():
    opt = optim.Optax(WRAPPED["multi_steps"]()).create(PARAMS)
    with pytest.raises(errors.HyperParamError,
                       match=r"`momentum` is not an injected.*inner_opt_state.*learning_rate"):
        opt.apply_gradient(_grads(0), momentum=0.9)
    plain = optim.Optax(optax.MultiSteps(optax.adam(1e-3), every_k_schedule=2)).create(PARAMS)
    with pytest.raises(errors.HyperParamError, match="MultiSteps.*no injected"):
        plain.apply_gradient(_grads(0), learning_rate=0.1)
