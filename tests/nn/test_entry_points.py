"""init / init_by_shape / call / create / create_by_shape, and Model under transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import nn
from tests.nn.modules_for_tests import MLP, Affine

X = jnp.ones((2, 3), jnp.float32)


def test_init_returns_output_and_params(rng):
    out, params = MLP.init(rng, X)
    np.testing.assert_allclose(out, MLP.call(params, X), rtol=1e-6)


@pytest.mark.parametrize("spec", [((2, 3), jnp.float32), (2, 3),
                                  jax.ShapeDtypeStruct((2, 3), jnp.float32)])
def test_init_by_shape_accepts_every_spec_form(rng, spec):
    out_shape, params = MLP.init_by_shape(rng, [spec])
    assert out_shape == jax.ShapeDtypeStruct((2, 2), jnp.float32)
    _, direct = MLP.init(rng, X)
    jax.tree.map(np.testing.assert_array_equal, params, direct)


def test_init_by_shape_forwards_extra_args(rng):
    out_shape, params = MLP.init_by_shape(rng, [(5, 3)], hidden=6, out=1)
    assert out_shape.shape == (5, 1)
    assert params["Affine_0"]["kernel"].shape == (3, 6)


def test_init_by_shape_spends_no_flops_on_inputs(rng):
    """The compiled init costs the same for a batch of 1 and a batch of 4096."""

    def init_flops(batch):
        def init_params(key):
            return Affine.init_by_shape(key, [((batch, 256), jnp.float32)], features=256)[1]

        return jax.jit(init_params).lower(rng).compile().cost_analysis().get("flops", 0.0)

    forward_flops = jax.jit(lambda x, k: x @ k).lower(
        jnp.zeros((4096, 256)), jnp.zeros((256, 256))).compile().cost_analysis()["flops"]
    small, large = init_flops(1), init_flops(4096)
    assert small == large
    assert large < forward_flops / 20  # what remains is the random initializers


def test_init_by_shape_traces_apply_once_and_runs_no_python_twice(rng):
    calls = []

    class Spy(nn.Module):
        def apply(self, x):
            calls.append(x.shape)
            return Affine(x, 2)

    Spy.init_by_shape(rng, [(4, 3)])
    assert calls == [(4, 3)]


def test_create_and_create_by_shape_give_models(rng):
    y, model = MLP.create(rng, X)
    assert isinstance(model, nn.Model) and model.module is MLP
    np.testing.assert_allclose(model(X), y, rtol=1e-6)
    shape, model2 = MLP.create_by_shape(rng, [((2, 3), jnp.float32)])
    assert shape.shape == (2, 2)
    jax.tree.map(np.testing.assert_array_equal, model.params, model2.params)


def test_model_is_a_pytree_of_params(rng):
    _, model = MLP.create(rng, X)
    leaves = jax.tree.leaves(model)
    assert len(leaves) == 4
    doubled = jax.tree.map(lambda p: 2 * p, model)
    assert isinstance(doubled, nn.Model) and doubled.module is MLP
    np.testing.assert_array_equal(doubled.params["Affine_0"]["kernel"],
                                  2 * model.params["Affine_0"]["kernel"])


def test_model_through_jit_grad_vmap(rng):
    _, model = MLP.create(rng, X)
    out = jax.jit(lambda m, x: m(x))(model, X)
    np.testing.assert_allclose(out, model(X), rtol=1e-6)

    grads = jax.grad(lambda m: jnp.sum(m(X) ** 2))(model)
    assert isinstance(grads, nn.Model)
    flat_params = jax.tree.leaves(model)
    flat_grads = jax.grad(lambda leaves: jnp.sum(nn.Model(MLP, jax.tree.unflatten(
        jax.tree.structure(model.params), leaves))(X) ** 2))(flat_params)
    jax.tree.map(np.testing.assert_allclose, jax.tree.leaves(grads), flat_grads)

    per_example = jax.vmap(lambda m, x: m(x[None])[0], in_axes=(None, 0))(model, X)
    np.testing.assert_allclose(per_example, model(X), rtol=1e-6)

    # vmap over a batch of models (an ensemble): params stacked on axis 0.
    ensemble = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), model)
    outs = jax.vmap(lambda m: m(X))(ensemble)
    assert outs.shape == (2, 2, 2)


def test_model_jit_cache_hits_on_new_params(rng):
    traces = []

    @jax.jit
    def forward(model, x):
        traces.append(1)
        return model(x)

    _, model = MLP.create(rng, X)
    forward(model, X)
    forward(model.replace(params=jax.tree.map(lambda p: p + 1, model.params)), X)
    assert len(traces) == 1


def test_model_replace_and_truncate_at(rng):
    _, model = MLP.create(rng, X)
    zeros = model.replace(params=jax.tree.map(jnp.zeros_like, model.params))
    np.testing.assert_array_equal(zeros(X), jnp.zeros((2, 2)))

    hidden = model.truncate_at("/Affine_0")(X)
    assert isinstance(hidden, list) and len(hidden) == 1
    p = model.params["Affine_0"]
    np.testing.assert_allclose(hidden[0], X @ p["kernel"] + p["bias"][None], rtol=1e-6)
    both = model.truncate_at({"h": "/Affine_0", "out": "/"})(X)
    np.testing.assert_allclose(both["out"][0], model(X), rtol=1e-6)


def test_capture_module_outputs(rng):
    _, params = MLP.init(rng, X)
    with nn.capture_module_outputs() as captured:
        y = MLP.call(params, X)
    assert set(captured.as_dict()) == {"/", "/Affine_0", "/Affine_1"}
    np.testing.assert_array_equal(captured["/"][0], y)


def test_unknown_model_attribute_is_an_attribute_error(rng):
    _, model = MLP.create(rng, X)
    with pytest.raises(AttributeError, match='No attribute named "decode"'):
        model.decode  # noqa: B018
