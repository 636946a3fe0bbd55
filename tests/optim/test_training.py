"""Training with flaxen.optim: convergence, the seed's train_step, no recompiles."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxen import errors, nn, optim


class MLP(nn.Module):
    def apply(self, x):
        x = nn.relu(nn.Dense(x, features=16))
        return nn.Dense(x, features=1)


def _regression_data():
    x = jax.random.uniform(jax.random.PRNGKey(3), (32, 2), minval=-1.0, maxval=1.0)
    y = jnp.sin(2.0 * x[:, :1]) * x[:, 1:]
    return x, y


def _mse(model, x, y):
    pred = model(x)
    return jnp.mean(jnp.square(pred - y)), pred


CONVERGE = {
    "sgd": optim.GradientDescent(0.1),
    "momentum": optim.Momentum(0.05),
    "adam": optim.Adam(0.05),
    "lars": optim.LARS(1.0, trust_coefficient=0.05),
    "lamb": optim.LAMB(0.05),
    "adagrad": optim.Adagrad(1.0),
    "rmsprop": optim.RMSProp(0.05),
    "adafactor": optim.Adafactor(0.1, multiply_by_parameter_scale=False),
    "optax": optim.Optax(optax.adamw(0.05)),
}


@pytest.mark.parametrize("name", sorted(CONVERGE))
def test_converges_on_quadratic(name):
    """min ||A p - b||^2 with a well-conditioned A: every optimizer gets close to 0."""
    a = jnp.array([[2.0, 0.3], [0.3, 1.0]])
    b = jnp.array([1.0, -2.0])

    def loss(p):
        r = a @ p["x"] - b
        return jnp.sum(r * r)

    @jax.jit
    def run(opt):
        body = lambda o, _: (o.apply_gradient(jax.grad(loss)(o.target)), None)
        return jax.lax.scan(body, opt, None, length=300)[0]

    opt = run(CONVERGE[name].create({"x": jnp.array([3.0, 3.0])}))
    assert float(loss(opt.target)) < 1e-2 * float(loss({"x": jnp.array([3.0, 3.0])}))


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_tiny_mlp_converges_seed_train_step(name, rng):
    """The seed's MNIST train_step shape: optimize(loss_fn) under jit; step advances."""
    x, y = _regression_data()
    _, model = MLP.create(rng, x)
    optimizer = CONVERGE[name].create(model)
    assert isinstance(optimizer.target, nn.Model)

    @jax.jit
    def train_step(optimizer, x, y):
        def loss_fn(model):
            return _mse(model, x, y)

        optimizer, loss, pred = optimizer.optimize(loss_fn)
        return optimizer, loss, pred

    first = None
    for _ in range(150):
        optimizer, loss, pred = train_step(optimizer, x, y)
        first = float(loss) if first is None else first
    assert pred.shape == (32, 1)
    assert int(optimizer.state.step) == 150
    assert isinstance(optimizer.target, nn.Model)
    assert float(loss) < 0.25 * first


def test_gradient_of_model_is_model_and_apply_gradient(rng):
    x, y = _regression_data()
    _, model = MLP.create(rng, x)
    opt = optim.GradientDescent(0.1).create(model)
    grads = jax.jit(jax.grad(lambda m: _mse(m, x, y)[0]))(opt.target)
    assert isinstance(grads, nn.Model)
    new = jax.jit(lambda o, g: o.apply_gradient(g))(opt, grads)
    want = jax.tree.map(lambda p, g: p - 0.1 * g, model.params, grads.params)
    for a, b in zip(jax.tree.leaves(new.target.params), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Gradients of model.params (a plain dict) are accepted for a Model target.
    new2 = jax.jit(lambda o, g: o.apply_gradient(g))(opt, grads.params)
    for a, b in zip(jax.tree.leaves(new.target), jax.tree.leaves(new2.target)):
        np.testing.assert_array_equal(a, b)


def test_compute_gradient_and_bare_loss():
    opt = optim.GradientDescent(0.5).create({"w": jnp.array([1.0, -2.0])})
    loss, aux, grad = opt.compute_gradient(lambda p: (jnp.sum(p["w"] ** 2), "aux"))
    assert aux == "aux" and float(loss) == 5.0
    np.testing.assert_array_equal(grad["w"], [2.0, -4.0])
    # The pre-release shapes: a bare loss gives (loss, grad) and (new_optimizer, loss).
    loss, grad = opt.compute_gradient(lambda p: jnp.sum(p["w"] ** 2))
    assert float(loss) == 5.0
    np.testing.assert_array_equal(grad["w"], [2.0, -4.0])
    out = opt.optimize(lambda p: jnp.sum(p["w"] ** 2))
    assert len(out) == 2 and float(out[1]) == 5.0
    np.testing.assert_array_equal(out[0].target["w"], [0.0, 0.0])
    new, loss, aux = opt.optimize(lambda p: (jnp.sum(p["w"] ** 2), None))
    assert aux is None and len(opt.compute_gradient(lambda p: (p["w"][0], 1))) == 3


def test_learning_rate_every_step_compiles_once():
    traces = []
    opt = optim.Adam(learning_rate=1e-3).create({"w": jnp.ones((3,))})

    @jax.jit
    def step(opt, lr):
        traces.append(1)  # runs once per trace, i.e. per compilation
        return opt.optimize(lambda p: (jnp.sum(p["w"] ** 2), None), learning_rate=lr)[0]

    sched = optim.schedules.warmup_cosine(0.1, warmup_steps=3, decay_steps=10)
    lrs = [sched(i) for i in range(10)]
    opt = step(opt, lrs[0])  # the one compilation
    compiles = []
    listener = lambda name, *_, **__: compiles.append(name)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for lr in lrs[1:]:
            opt = step(opt, lr)
        jax.block_until_ready(opt)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert "/jax/core/compile/backend_compile_duration" not in compiles
    assert len(traces) == 1
    for lr in (0.1, 0.01, 0.001):  # Python floats (weakly typed): at most one more trace
        opt = step(opt, lr)
    assert len(traces) <= 2
    assert int(opt.state.step) == 13


def test_same_definition_no_recompile_across_equal_defs():
    """Equal definitions (same hyper-parameters) hash equal: jit's cache hits."""
    traces = []

    @jax.jit
    def step(opt):
        traces.append(1)
        return opt.apply_gradient({"w": jnp.ones(2)})

    for _ in range(3):
        step(optim.Momentum(0.1, beta=0.9).create({"w": jnp.zeros(2)}))
    assert len(traces) == 1
    assert optim.Momentum(0.1) == optim.Momentum(0.1) != optim.Momentum(0.2)


def test_per_step_override_is_for_that_step_only():
    opt = optim.GradientDescent(1.0).create({"w": jnp.zeros(())})
    g = {"w": jnp.ones(())}
    opt = opt.apply_gradient(g, learning_rate=0.5)
    opt = opt.apply_gradient(g)
    assert float(opt.target["w"]) == -1.5


def test_optax_adapter_injected_learning_rate():
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
    opt = optim.Optax(tx).create({"w": jnp.zeros(())})
    opt = opt.apply_gradient({"w": jnp.ones(())}, learning_rate=0.25)
    assert float(opt.target["w"]) == -0.25


def test_bfloat16_params_with_float32_learning_rate():
    opt = optim.Momentum(beta=0.9).create({"w": jnp.ones((3,), jnp.bfloat16)})
    opt = jax.jit(lambda o, lr: o.apply_gradient({"w": jnp.ones((3,), jnp.bfloat16)},
                                                 learning_rate=lr))(opt, jnp.float32(0.5))
    assert opt.target["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(opt.target["w"], np.float32), [0.5] * 3)


def test_schedules_values():
    s = optim.schedules
    np.testing.assert_allclose(s.constant(0.3)(7), 0.3)
    warm = s.linear_warmup(1.0, warmup_steps=4)
    np.testing.assert_allclose([warm(i) for i in (0, 2, 4, 9)], [0.0, 0.5, 1.0, 1.0])
    cos = s.cosine_decay(2.0, decay_steps=10)
    ref = [2.0 * 0.5 * (1 + np.cos(np.pi * min(t, 10) / 10)) for t in (0, 5, 10, 12)]
    np.testing.assert_allclose([cos(t) for t in (0, 5, 10, 12)], ref, atol=1e-6)
    step = s.step_decay(1.0, [3, 6], factor=0.1)
    np.testing.assert_allclose([step(t) for t in (0, 3, 5, 6, 9)],
                               [1.0, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
    both = s.multiply(warm, step)
    np.testing.assert_allclose(both(2), 0.5)
    joined = s.join([s.constant(1.0), s.cosine_decay(1.0, 4)], [2])
    np.testing.assert_allclose([joined(0), joined(2), joined(6)], [1.0, 1.0, 0.0], atol=1e-6)
    assert jax.jit(cos)(jnp.int32(5)).dtype == jnp.float32


@pytest.mark.parametrize("opt_def", [
    optim.Adam(0.1),
    optim.MultiOptimizer((optim.ModelParamTraversal(lambda p, _: "kernel" in p),
                          optim.Momentum(0.1))),
], ids=["adam", "multi"])
def test_serialization_round_trip(opt_def, rng):
    from flaxen import serialization

    x, y = _regression_data()
    _, model = MLP.create(rng, x)
    opt = opt_def.create(model)
    opt = opt.apply_gradient(jax.grad(lambda m: _mse(m, x, y)[0])(opt.target))
    restored = serialization.from_bytes(opt_def.create(model), serialization.to_bytes(opt))
    assert set(opt.state_dict()) == {"target", "state"}
    again = opt_def.create(model).restore_state(opt.state_dict())
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(opt)):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(restored) == jax.tree.structure(opt)
    assert int(restored.state.step) == 1
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(opt)):
        np.testing.assert_array_equal(a, b)


def test_pre_release_per_leaf_optimizer_def():
    """Old code defining init_param_state/apply_param_gradient still works."""
    from flaxen import struct

    @struct.dataclass
    class _HP:
        learning_rate: float
        decay: float

    class EmaSGD(optim.OptimizerDef):  # p <- p - lr * ema(g), written per leaf
        def __init__(self, learning_rate=None, decay=0.5):
            super().__init__(_HP(learning_rate, decay))

        def init_param_state(self, param):
            return jnp.zeros_like(param)

        def apply_param_gradient(self, step, hyper_params, param, state, grad):
            ema = hyper_params.decay * state + (1 - hyper_params.decay) * grad
            return param - hyper_params.learning_rate * ema, ema

    opt = EmaSGD(0.1).create({"w": jnp.ones(2), "b": {"c": jnp.zeros(())}})
    g = {"w": jnp.full(2, 2.0), "b": {"c": jnp.ones(())}}
    opt = jax.jit(lambda o: o.apply_gradient(g).apply_gradient(g, learning_rate=1.0))(opt)
    # ema: 1.0 then 1.5 (w); 0.5 then 0.75 (c)
    np.testing.assert_allclose(opt.target["w"], [1 - 0.1 * 1.0 - 1.5] * 2, rtol=1e-6)
    np.testing.assert_allclose(opt.target["b"]["c"], -0.05 - 0.75, rtol=1e-6)
    assert int(opt.state.step) == 2


def test_schedule_in_constructor_is_evaluated_by_optax():
    sched = optim.schedules.linear_warmup(1.0, warmup_steps=4)  # 0, .25, .5, ...
    opt = optim.SGD(sched).create({"w": jnp.ones(())})
    step = jax.jit(lambda o: o.apply_gradient({"w": jnp.ones(())}))
    for _ in range(3):
        opt = step(opt)
    np.testing.assert_allclose(opt.target["w"], 1.0 - 0.75)
    with pytest.raises(errors.HyperParamError, match="schedule"):
        opt.apply_gradient({"w": jnp.ones(())}, learning_rate=0.1)
