"""MultiOptimizer: parts follow their own optimizer; unselected parameters are frozen."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import errors, nn, optim


class Net(nn.Module):
    def apply(self, x):
        x = nn.Dense(x, features=4, name="encoder")
        return nn.Dense(jnp.tanh(x), features=2, name="head")


def _setup(rng):
    x = jax.random.normal(rng, (6, 3))
    _, model = Net.create(rng, x)
    # A frozen leaf with a -0.0 entry: "+ 0" would turn it into +0.0, bit-for-bit it must stay.
    params = jax.tree.map(lambda p: p, model.params)
    params["head"]["bias"] = jnp.array([-0.0, 1.5])
    model = model.replace(params=params)

    def loss(m):
        return jnp.mean(jnp.square(m(x) - 1.0))

    return model, loss


def test_frozen_part_bit_for_bit_and_parts_follow_their_optimizer(rng):
    model, loss = _setup(rng)
    kernels = optim.ModelParamTraversal(lambda path, _: path.endswith("kernel"))
    enc_bias = optim.ModelParamTraversal(lambda path, _: path == "/encoder/bias")
    opt_def = optim.MultiOptimizer((kernels, optim.Momentum(0.1)),
                                   (enc_bias, optim.Adam(0.01)))
    opt = opt_def.create(model)

    @jax.jit
    def step(opt):
        return opt.apply_gradient(jax.grad(loss)(opt.target))

    for _ in range(5):
        opt = step(opt)
    frozen_before = np.asarray(model.params["head"]["bias"])
    frozen_after = np.asarray(opt.target.params["head"]["bias"])
    assert frozen_after.tobytes() == frozen_before.tobytes()
    assert np.signbit(frozen_after[0])
    assert int(opt.state.step) == 5
    assert [int(s.step) for s in opt.state.param_states] == [5, 5]

    # Reference: the same loss, each part stepped by its own optimizer alone.
    mom = optim.Momentum(0.1).create(kernels.select(model))
    adam = optim.Adam(0.01).create(enc_bias.select(model))

    @jax.jit
    def ref_step(ref, mom, adam):
        g = jax.grad(loss)(ref)
        mom = mom.apply_gradient(kernels.select(g))
        adam = adam.apply_gradient(enc_bias.select(g))
        return optim.multi.set_leaves(ref, {**mom.target, **adam.target}), mom, adam

    ref = model
    for _ in range(5):
        ref, mom, adam = ref_step(ref, mom, adam)
    for a, b in zip(jax.tree.leaves(opt.target), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(opt.target.params["head"]["kernel"], model.params["head"]["kernel"])


def test_shared_override_and_focus(rng):
    model, loss = _setup(rng)
    heads = optim.ModelParamTraversal(lambda path, _: path.startswith("/head"))
    opt = optim.GradientDescent().create(model, focus=heads)
    g = jax.grad(loss)(model)
    new = opt.apply_gradient(g, learning_rate=0.5)
    np.testing.assert_allclose(new.target.params["head"]["kernel"],
                               model.params["head"]["kernel"] - 0.5 * g.params["head"]["kernel"],
                               rtol=1e-6)
    np.testing.assert_array_equal(new.target.params["encoder"]["kernel"],
                                  model.params["encoder"]["kernel"])


def test_traversal_paths_and_update(rng):
    model, _ = _setup(rng)
    t = optim.ModelParamTraversal(lambda path, _: "bias" in path)
    assert list(t.select(model)) == ["/encoder/bias", "/head/bias"]
    assert len(list(t.iterate(model))) == 2
    zeroed = t.update(jnp.zeros_like, model)
    assert isinstance(zeroed, nn.Model)
    assert float(jnp.abs(zeroed.params["head"]["bias"]).sum()) == 0.0
    np.testing.assert_array_equal(zeroed.params["head"]["kernel"], model.params["head"]["kernel"])
    assert list(t.select({"a": {"bias": 1.0}, "w": 2.0})) == ["/a/bias"]


def test_overlapping_traversals_error(rng):
    model, _ = _setup(rng)
    everything = optim.ModelParamTraversal(lambda path, _: True)
    kernels = optim.ModelParamTraversal(lambda path, _: "kernel" in path)
    opt_def = optim.MultiOptimizer((everything, optim.Adam(0.1)), (kernels, optim.SGD(0.1)))
    with pytest.raises(errors.HyperParamError, match="\"encoder/kernel\".*twice"):
        opt_def.create(model)
    with pytest.raises(errors.HyperParamError, match="pair"):
        optim.MultiOptimizer(optim.Adam(0.1))
    multi = optim.MultiOptimizer((kernels, optim.SGD(0.1)))
    with pytest.raises(errors.HyperParamError, match="beta1"):
        multi.create(model).apply_gradient(jax.tree.map(jnp.zeros_like, model), beta1=0.5)


def test_multi_with_optax_adapter_and_dict_target():
    import optax

    a = optim.ModelParamTraversal(lambda path, _: path.startswith("/a"))
    b = optim.ModelParamTraversal(lambda path, _: path.startswith("/b"))
    multi = optim.MultiOptimizer((a, optim.Optax(optax.sgd(0.1))), (b, optim.SGD(1.0)))
    opt = multi.create({"a": jnp.ones(2), "b": jnp.ones(2), "c": jnp.ones(2)})
    opt = opt.apply_gradient(jax.tree.map(jnp.ones_like, opt.target), learning_rate=0.5)
    np.testing.assert_allclose(opt.target["a"], [0.9, 0.9], rtol=1e-6)  # optax's own lr
    np.testing.assert_allclose(opt.target["b"], [0.5, 0.5])  # the override
    np.testing.assert_array_equal(opt.target["c"], [1.0, 1.0])  # frozen
