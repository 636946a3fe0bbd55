"""Norm layers against their formulas; BatchNorm running stats, eval mode, cross-device."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec
from jax.test_util import check_grads

from flaxen import nn
from flaxen.errors import LayerArgumentError, MissingStateError, ShapeError


def _np(x):
    return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


def _rand_params(params, rng):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(rng, len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)])


def test_layer_norm_formula(rng):
    x = jax.random.normal(rng, (2, 3, 5)) * 3 + 1
    _, params = nn.LayerNorm.init(rng, x)
    params = _rand_params(params, rng)
    y = nn.LayerNorm.call(params, x)
    xn = _np(x)
    ref = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-6)
    ref = ref * _np(params["scale"]) + _np(params["bias"])
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4)


def test_rms_norm_formula(rng):
    x = jax.random.normal(rng, (4, 6))
    _, params = nn.RMSNorm.init(rng, x)
    params = _rand_params(params, rng)
    assert set(params) == {"scale"}
    xn = _np(x)
    ref = xn / np.sqrt((xn**2).mean(-1, keepdims=True) + 1e-6) * _np(params["scale"])
    np.testing.assert_allclose(np.asarray(nn.RMSNorm.call(params, x)), ref, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("groups,size", [(2, None), (None, 3)])
def test_group_norm_formula(rng, groups, size):
    x = jax.random.normal(rng, (2, 3, 2, 6))
    _, params = nn.GroupNorm.init(rng, x, num_groups=groups, group_size=size)
    assert params["scale"].shape == (6,)
    params = _rand_params(params, rng)
    y = nn.GroupNorm.call(params, x, num_groups=groups, group_size=size)
    g = 2
    xn = _np(x).reshape(2, 3, 2, g, 3)
    mean = xn.mean(axis=(1, 2, 4), keepdims=True)
    var = xn.var(axis=(1, 2, 4), keepdims=True)
    ref = ((xn - mean) / np.sqrt(var + 1e-6)).reshape(2, 3, 2, 6)
    ref = ref * _np(params["scale"]) + _np(params["bias"])
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4)


def test_group_norm_errors(rng):
    with pytest.raises(LayerArgumentError, match="exactly one"):
        nn.GroupNorm.init(rng, jnp.ones((1, 4)), num_groups=2, group_size=2)
    with pytest.raises(LayerArgumentError, match=r"channels \(6\)"):
        nn.GroupNorm.init(rng, jnp.ones((1, 6)), num_groups=4)
    with pytest.raises(ShapeError, match="rank >= 2"):
        nn.GroupNorm.init(rng, jnp.ones((6,)), num_groups=2)


def test_norms_bf16_compute(rng):
    x = jax.random.normal(rng, (2, 8)).astype(jnp.bfloat16)
    for layer in (nn.LayerNorm, nn.RMSNorm):
        y, params = layer.init(rng, x, dtype=jnp.bfloat16)
        assert y.dtype == jnp.bfloat16 and params["scale"].dtype == jnp.float32


class BNNet(nn.Module):
    def apply(self, x, train=True, axis_name=None):
        return nn.BatchNorm(x, use_running_average=not train, momentum=0.9,
                            axis_name=axis_name)


def bn_ref(x, eps=1e-5):
    mean = x.mean(axis=(0, 1))
    var = x.var(axis=(0, 1))
    return (x - mean) / np.sqrt(var + eps), mean, var


def test_batch_norm_running_stats_follow_recurrence(rng):
    xs = [jax.random.normal(jax.random.PRNGKey(i), (4, 3, 2)) * (i + 1) + i for i in range(4)]
    _, params, state = BNNet.init_with_state(rng, xs[0])
    assert jax.tree.map(jnp.shape, params) == {"BatchNorm_0": {"bias": (2,), "scale": (2,)}}
    np.testing.assert_array_equal(np.asarray(state["/BatchNorm_0"]["var"]), np.ones(2))
    step = jax.jit(lambda s, x: BNNet.call_with_state(params, s, x))
    ra_mean, ra_var = np.zeros(2), np.ones(2)
    for x in xs:
        y, state = step(state, x)
        ref, mean, var = bn_ref(_np(x))
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4)
        ra_mean = 0.9 * ra_mean + 0.1 * mean
        ra_var = 0.9 * ra_var + 0.1 * var
    np.testing.assert_allclose(np.asarray(state["/BatchNorm_0"]["mean"]), ra_mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state["/BatchNorm_0"]["var"]), ra_var, rtol=1e-5)
    # Evaluation reads the running averages and writes nothing.
    x = xs[0]
    y, new_state = BNNet.call_with_state(params, state, x, train=False, _mutable=False)
    ref = (_np(x) - ra_mean) / np.sqrt(ra_var + 1e-5)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4)
    assert new_state is state


def test_batch_norm_needs_state(rng):
    with pytest.raises(MissingStateError, match='"BatchNorm_0".*init_with_state'):
        BNNet.init(rng, jnp.ones((2, 3)))
    _, params, state = BNNet.init_with_state(rng, jnp.ones((2, 3)))
    with pytest.raises(MissingStateError, match='"BatchNorm_0".*running statistics'):
        BNNet.call_with_state(params, nn.Collection(), jnp.ones((2, 3)), train=False,
                              _mutable=False)
    # Initialising in evaluation mode creates the statistics too.
    _, _, state = BNNet.init_with_state(rng, jnp.ones((2, 3)), train=False)
    assert state["/BatchNorm_0"]["mean"].shape == (3,)


def test_batch_norm_cross_device_equals_full_batch(rng):
    x = jax.random.normal(rng, (16, 3)) * 2 + 1
    _, params, state = BNNet.init_with_state(rng, x)
    y_full, s_full = BNNet.call_with_state(params, state, x)

    mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))

    @partial(jax.shard_map, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec("batch")),
             out_specs=(PartitionSpec("batch"), PartitionSpec()))
    def sharded(state, x):
        y, new = BNNet.call_with_state(params, state, x, axis_name="batch")
        return y, new

    assert len(jax.devices()) == 8
    y_sh, s_sh = jax.jit(sharded)(state, x)
    np.testing.assert_allclose(np.asarray(y_sh), np.asarray(y_full), rtol=1e-5, atol=1e-5)
    for k in ("mean", "var"):
        np.testing.assert_allclose(np.asarray(s_sh["/BatchNorm_0"][k]),
                                   np.asarray(s_full["/BatchNorm_0"][k]), rtol=1e-5, atol=1e-6)
    # The same with vmap over an 8-way split.
    y_v, s_v = jax.vmap(lambda xb: BNNet.call_with_state(params, state, xb, axis_name="b"),
                        axis_name="b")(x.reshape(8, 2, 3))
    np.testing.assert_allclose(np.asarray(y_v).reshape(16, 3), np.asarray(y_full), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(s_v["/BatchNorm_0"]["mean"][0]),
                               np.asarray(s_full["/BatchNorm_0"]["mean"]), rtol=1e-5)


def test_norm_grads(rng):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4)), jnp.float32)
    for layer, kw in ((nn.LayerNorm, {}), (nn.RMSNorm, {}), (nn.GroupNorm, {"num_groups": 2})):
        _, params = layer.init(rng, x, **kw)
        f = jax.jit(lambda p, x, layer=layer, kw=kw: layer.call(p, x, **kw))
        check_grads(f, (params, x), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)
    _, params, state = BNNet.init_with_state(rng, x)
    f = jax.jit(lambda p, x: BNNet.call_with_state(p, state, x)[0])
    check_grads(f, (params, x), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


def test_batch_norm_channels_first_axis(rng):
    # axis=1 (NCHW): statistics over batch and spatial axes, params of shape (C,).
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 2, 4, 4)) * 2 + 1,
                    jnp.float32)
    y, params, state = nn.BatchNorm.init_with_state(rng, x, axis=1)
    assert params["scale"].shape == (2,) and state["/"]["mean"].shape == (2,)
    xn = _np(x)
    mean = xn.mean(axis=(0, 2, 3), keepdims=True)
    var = xn.var(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(np.asarray(y), (xn - mean) / np.sqrt(var + 1e-5), rtol=1e-4,
                               atol=1e-4)
