"""flaxen <-> Flax Linen params (checked by running Linen's own layers) and safetensors files."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import convert, nn
from flaxen.errors import SerializationError

linen = pytest.importorskip("flax.linen")


class Block(nn.Module):
    def apply(self, x):
        x = nn.Dense(x, 6)
        return nn.relu(nn.BatchNorm(x, use_running_average=True))


class Net(nn.Module):
    """Conv, BatchNorm, Conv, Dense, a nested Block, LayerNorm, Dense: classes interleaved."""

    def apply(self, x):
        x = nn.Conv(x, 4, (3, 3))
        x = nn.relu(nn.BatchNorm(x, use_running_average=True))
        x = nn.Conv(x, 3, (3, 3))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(x, 8)
        x = Block(x)
        x = nn.LayerNorm(x)
        return nn.Dense(x, 2)


class LinenBlock(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.Dense(6)(x)
        return linen.relu(linen.BatchNorm(use_running_average=True)(x))


class LinenNet(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.Conv(4, (3, 3))(x)
        x = linen.relu(linen.BatchNorm(use_running_average=True)(x))
        x = linen.Conv(3, (3, 3))(x)
        x = x.reshape((x.shape[0], -1))
        x = linen.Dense(8)(x)
        x = LinenBlock()(x)
        x = linen.LayerNorm()(x)
        return linen.Dense(2)(x)


X = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 5, 3))


def _randomize(tree, seed):
    """Every leaf replaced by random values (positive, so variances stay valid)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.uniform(k, x.shape, x.dtype, 0.5, 1.5)
                                        for k, x in zip(keys, leaves)])


def _flaxen_model():
    _, params, state = Net.init_with_state(jax.random.PRNGKey(0), X)
    return _randomize(params, 2), _randomize(state, 3)


def test_names_renumbered_per_class():
    params, state = _flaxen_model()
    assert sorted(params) == ["BatchNorm_1", "Block_4", "Conv_0", "Conv_2", "Dense_3",
                              "Dense_6", "LayerNorm_5"]
    variables = convert.flaxen_to_linen(params, state)
    assert sorted(variables["params"]) == ["BatchNorm_0", "Block_0", "Conv_0", "Conv_1",
                                           "Dense_0", "Dense_1", "LayerNorm_0"]
    assert variables["params"]["Dense_1"]["kernel"] is params["Dense_6"]["kernel"]
    assert sorted(variables["batch_stats"]) == ["BatchNorm_0", "Block_0"]
    assert sorted(variables["batch_stats"]["Block_0"]) == ["BatchNorm_0"]


def _linen_variables(variables):
    """Linen names its nested block after its class; ours is `Block`: rename that key."""
    return {col: {("LinenBlock_0" if k == "Block_0" else k): v for k, v in tree.items()}
            for col, tree in variables.items()}


def test_flaxen_to_linen_gives_same_outputs():
    params, state = _flaxen_model()
    variables = _linen_variables(convert.flaxen_to_linen(params, state))
    want = Net.call_with_state(params, state, X, _mutable=False)[0]
    got = LinenNet().apply(variables, X)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_linen_to_flaxen_gives_same_outputs():
    variables = _randomize(LinenNet().init(jax.random.PRNGKey(0), X), 4)
    want = LinenNet().apply(variables, X)
    template_params, template_state = _flaxen_model()
    back = {col: {("Block_0" if k == "LinenBlock_0" else k): v for k, v in tree.items()}
            for col, tree in variables.items()}
    params, state = convert.linen_to_flaxen(back, template_params, template_state)
    got = Net.call_with_state(params, state, X, _mutable=False)[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    # and the round trip is exact
    again = convert.flaxen_to_linen(params, state)
    jax.tree.map(np.testing.assert_array_equal, again, back)


def test_linen_to_flaxen_mismatch_is_a_clear_error():
    params, state = _flaxen_model()
    variables = convert.flaxen_to_linen(params, state)
    del variables["params"]["Dense_1"]
    with pytest.raises(SerializationError, match=r"variables at `params` have.*Dense_1"):
        convert.linen_to_flaxen(variables, params, state)
    variables = convert.flaxen_to_linen(params, state)
    variables["params"]["Conv_1"]["kernel"] = jnp.zeros((1, 1, 4, 3))
    with pytest.raises(SerializationError,
                       match=r"variable `params/Conv_1/kernel` has shape \(1, 1, 4, 3\)"):
        convert.linen_to_flaxen(variables, params, state)


def test_safetensors_round_trip(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.numpy import load_file

    params, _ = _flaxen_model()
    params["Dense_6"]["kernel"] = params["Dense_6"]["kernel"].astype(jnp.bfloat16)
    path = tmp_path / "model.safetensors"
    convert.save_safetensors(params, path, metadata={"format": "flaxen"})
    raw = load_file(str(path))  # the file as any safetensors reader sees it
    assert "Block_4/Dense_0/kernel" in raw and raw["Conv_0/kernel"].shape == (3, 3, 3, 4)
    loaded = convert.load_safetensors(path)
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    np.testing.assert_array_equal(np.asarray(Net.call_with_state(loaded, _flaxen_model()[1], X,
                                                                 _mutable=False)[0]),
                                  np.asarray(Net.call_with_state(params, _flaxen_model()[1], X,
                                                                 _mutable=False)[0]))


def test_flatten_refuses_slash_in_key():
    with pytest.raises(SerializationError, match="without '/'"):
        convert.flatten_params({"a/b": np.ones(2)})
