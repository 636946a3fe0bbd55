"""One protocol for every optimizer, and the flat ``Optimizer`` pytree node."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxen import nn, optim, traverse_util
from flaxen.optim.base import ReplicatedOptimizer


def _params():
    return {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}


KERNELS = optim.ModelParamTraversal(lambda path, _: path.endswith("kernel"))
BIASES = optim.ModelParamTraversal(lambda path, _: path.endswith("bias"))
TX = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)


def _defs():
    """Each kind of definition, built twice from equal arguments."""
    return [
        lambda: optim.Momentum(0.1, beta=0.9),
        lambda: optim.Adam(1e-3),
        lambda: optim.MultiOptimizer((KERNELS, optim.Momentum(0.1)), (BIASES, optim.Adam(0.1))),
        lambda: optim.WeightNorm(optim.Adam(1e-3), wn_decay=0.1),
        lambda: optim.Optax(TX),
        lambda: ReplicatedOptimizer(optim.Momentum(0.1), axis_name="batch"),
    ]


@pytest.mark.parametrize("make", _defs(), ids=["momentum", "adam", "multi", "weight_norm",
                                               "optax", "replicated"])
def test_every_definition_follows_the_protocol(make):
    a, b = make(), make()
    assert isinstance(a, optim.OptimizerDef)
    assert a == b and hash(a) == hash(b) and a is not b  # (type, hyper_params, parts)
    hp = a.update_hyper_params()
    assert type(hp) is type(a.hyper_params)
    params = _params()
    state = a.init_state(params)
    assert isinstance(state, optim.OptimizerState) and int(state.step) == 0
    grads = jax.tree.map(jnp.ones_like, params)
    # A ReplicatedOptimizer averages over a pmap axis first; its wrapped one does the update.
    impl = a.optimizer_def if isinstance(a, ReplicatedOptimizer) else a
    new_params, new_state = impl.apply_gradient(hp, params, state, grads)
    assert jax.tree.structure(new_params) == jax.tree.structure(params)
    assert int(new_state.step) == 1


def test_definitions_differ_when_their_parts_differ():
    assert optim.Momentum(0.1) != optim.Momentum(0.2)
    assert optim.WeightNorm(optim.Adam(0.1)) != optim.WeightNorm(optim.Adam(0.2))
    multi = optim.MultiOptimizer((KERNELS, optim.Adam(0.1)))
    assert multi != optim.MultiOptimizer((BIASES, optim.Adam(0.1)))
    assert optim.Optax(TX) != optim.Optax(optax.inject_hyperparams(optax.sgd)(0.1))


def test_per_step_override_reaches_the_update_through_each_combinator():
    params, grads = _params(), jax.tree.map(jnp.ones_like, _params())
    for opt_def in (optim.GradientDescent(1.0), optim.Optax(TX),
                    optim.MultiOptimizer((KERNELS, optim.GradientDescent(1.0)),
                                         (BIASES, optim.GradientDescent(1.0)))):
        opt = opt_def.create(params).apply_gradient(grads, learning_rate=0.5)
        np.testing.assert_allclose(opt.target["dense"]["kernel"], 0.5, err_msg=repr(opt_def))


class _MLP(nn.Module):
    def apply(self, x):
        return nn.Dense(nn.relu(nn.Dense(x, features=4)), features=2)


def test_flat_node_round_trips_through_jit_without_retracing(rng):
    x = jnp.ones((3, 5))
    _, model = _MLP.create(rng, x)
    opt = optim.Momentum(0.1, beta=0.9).create(model)
    traces = []

    @jax.jit
    def step(opt):
        traces.append(1)
        return opt.optimize(lambda m: jnp.mean(m(x) ** 2))[0]

    ref_params, ref_state = model.params, optax.sgd(0.1, momentum=0.9).init(model.params)
    for _ in range(3):
        opt = step(opt)
        grads = jax.grad(lambda p: jnp.mean(_MLP.call(p, x) ** 2))(ref_params)
        updates, ref_state = optax.sgd(0.1, momentum=0.9).update(grads, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)
    assert len(traces) == 1  # the output's static data equals (is) the input's
    assert isinstance(opt, optim.Optimizer) and isinstance(opt.target, nn.Model)
    assert int(opt.state.step) == 3
    for got, want in zip(jax.tree.leaves(opt.target.params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_flat_node_leaves_paths_and_tree_functions():
    params = _params()
    opt = optim.Momentum(0.1).create(params)
    leaves, treedef = jax.tree.flatten(opt)
    assert len(leaves) == 1 + 2 + 2  # step, momentum per param, the params
    back = jax.tree.unflatten(treedef, leaves)
    assert back.optimizer_def == opt.optimizer_def
    np.testing.assert_array_equal(back.target["dense"]["kernel"], params["dense"]["kernel"])
    paths = [traverse_util.path_to_str(p)
             for p, _ in jax.tree_util.tree_flatten_with_path(opt)[0]]
    assert "state/step" in paths and "target/dense/kernel" in paths
    doubled = jax.tree.map(lambda v: v * 2, opt)
    np.testing.assert_array_equal(doubled.target["dense"]["kernel"], 2.0)
    replaced = opt.replace(target={"dense": {"kernel": jnp.zeros((2, 3)),
                                             "bias": jnp.ones(3)}})
    np.testing.assert_array_equal(jax.tree.leaves(replaced)[-1], 0.0)
    assert repr(opt).startswith("Optimizer(")
