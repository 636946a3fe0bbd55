"""Every optimizer against optax run directly: identical parameters after 50 steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxen import optim

STEPS = 50
# name -> (flaxen def, the optax transformation it must equal)
CASES = {
    "sgd": (optim.GradientDescent(0.05), optax.sgd(0.05)),
    "momentum": (optim.Momentum(0.05, beta=0.8), optax.sgd(0.05, momentum=0.8)),
    "nesterov": (optim.Momentum(0.05, nesterov=True),
                 optax.sgd(0.05, momentum=0.9, nesterov=True)),
    "momentum_wd": (optim.Momentum(0.05, weight_decay=0.1),
                    optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.05, momentum=0.9))),
    "adam": (optim.Adam(0.01, beta1=0.8, beta2=0.99, eps=1e-6),
             optax.adam(0.01, b1=0.8, b2=0.99, eps=1e-6)),
    "adamw": (optim.Adam(0.01, weight_decay=0.1), optax.adamw(0.01, weight_decay=0.1)),
    "lars": (optim.LARS(0.1, weight_decay=0.01, trust_coefficient=0.01),
             optax.lars(0.1, weight_decay=0.01, trust_coefficient=0.01)),
    "lamb": (optim.LAMB(0.01, weight_decay=0.01), optax.lamb(0.01, weight_decay=0.01)),
    "adagrad": (optim.Adagrad(0.1), optax.adagrad(0.1, initial_accumulator_value=0.0,
                                                  eps=1e-8)),
    "rmsprop": (optim.RMSProp(0.01, beta2=0.95),
                optax.rmsprop(0.01, decay=0.95, eps=1e-8, eps_in_sqrt=False)),
    "adafactor": (optim.Adafactor(0.01, min_dim_size_to_factor=2, beta1=0.9,
                                  weight_decay_rate=0.01),
                  optax.adafactor(0.01, min_dim_size_to_factor=2, momentum=0.9,
                                  weight_decay_rate=0.01)),
    "adafactor_unfactored": (optim.Adafactor(0.01, factored=False),
                             optax.adafactor(0.01, factored=False)),
    "optax_adapter": (optim.Optax(optax.adabelief(0.01)), optax.adabelief(0.01)),
}
TOL = {jnp.float32: dict(rtol=1e-6, atol=1e-7), jnp.bfloat16: dict(rtol=1e-2, atol=1e-2)}


def _problem(dtype):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    params = {"w": jax.random.normal(k1, (4, 3)).astype(dtype),
              "b": jnp.zeros((3,), dtype),
              "deep": {"v": jax.random.normal(k2, (3,)).astype(dtype)}}
    x = jax.random.normal(k3, (8, 4)).astype(dtype)

    def loss(p):
        y = jnp.tanh(x @ p["w"] + p["b"][None, :]) * p["deep"]["v"][None, :]
        return jnp.mean(jnp.square(y - 0.5).astype(jnp.float32))

    return params, loss


def _run_flaxen(opt_def, params, loss):
    def body(opt, _):
        return opt.apply_gradient(jax.grad(loss)(opt.target)), None

    opt, _ = jax.lax.scan(body, opt_def.create(params), None, length=STEPS)
    return opt


def _run_optax(tx, params, loss):
    def body(carry, _):
        p, s = carry
        updates, s = tx.update(jax.grad(loss)(p), s, p)
        return (optax.apply_updates(p, updates), s), None

    # optax is written for standard dtype promotion (the suite runs strict).
    with jax.numpy_dtype_promotion("standard"):
        (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=STEPS)
    return p


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_optax_after_50_steps(name):
    opt_def, tx = CASES[name]
    params, loss = _problem(jnp.float32)
    both = jax.jit(lambda p: (_run_flaxen(opt_def, p, loss), _run_optax(tx, p, loss)))
    opt, want = both(params)  # one compilation for both runs
    assert int(opt.state.step) == STEPS
    moved = np.abs(np.asarray(opt.target["w"]) - np.asarray(params["w"])).max()
    assert moved > 1e-4, "the optimizer did not move the parameters"
    for got, ref in zip(jax.tree.leaves(opt.target), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, ref, **TOL[jnp.float32])


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_matches_optax_bfloat16(name):
    opt_def, tx = CASES[name]
    params, loss = _problem(jnp.bfloat16)
    opt, want = jax.jit(lambda p: (_run_flaxen(opt_def, p, loss), _run_optax(tx, p, loss)))(
        params)
    for got, ref in zip(jax.tree.leaves(opt.target), jax.tree.leaves(want)):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32),
                                   **TOL[jnp.bfloat16])


@pytest.mark.parametrize("make", [
    lambda lr: (optim.Momentum(beta=0.9), optax.sgd(lr, momentum=0.9)),
    lambda lr: (optim.Adam(), optax.adam(lr)),
    lambda lr: (optim.LARS(), optax.lars(lr)),
])
def test_learning_rate_per_step_matches_optax_schedule(make):
    """A schedule passed per step equals optax given the same schedule."""
    sched = optim.schedules.warmup_cosine(0.1, warmup_steps=5, decay_steps=STEPS)
    opt_def, tx = make(sched)
    params, loss = _problem(jnp.float32)

    @jax.jit
    def run(params):
        def body(opt, _):
            lr = sched(opt.state.step)
            return opt.apply_gradient(jax.grad(loss)(opt.target), learning_rate=lr), None

        return jax.lax.scan(body, opt_def.create(params), None, length=STEPS)[0]

    opt = run(params)
    want = _run_optax(tx, params, loss)
    for got, ref in zip(jax.tree.leaves(opt.target), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_lamb_zero_initialised_leaf_moves():
    """Documented difference from pre-release Flax: optax's trust ratio is 1 at |p| = 0."""
    params, loss = _problem(jnp.float32)
    opt = _run_flaxen(optim.LAMB(0.01), params, loss)
    assert np.abs(np.asarray(opt.target["b"])).max() > 0
