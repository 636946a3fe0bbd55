"""Tests of the ResNet models: parameter counts, layout, dtypes, and a block against lax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from examples.imagenet import models
from flaxen import nn
from flaxen.errors import ShapeError


@pytest.fixture
def rng():
    # rbg keys: the same tests, but initializers compile several times faster than threefry.
    return jax.random.key(0, impl="rbg")


# Parameter counts of the standard ResNet v1.5 definitions (torchvision's numbers).
EXPECTED_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_counts_from_shapes(name):
    # jax.eval_shape runs no initializer and compiles nothing: shapes only.
    def init(rng):
        _, params, state = models.get_model(name).init_with_state(
            rng, jnp.zeros((1, 32, 32, 3), jnp.float32))
        return params, state

    params, state = jax.eval_shape(init, jax.random.PRNGKey(0))
    assert _count(params) == EXPECTED_PARAMS[name]
    # Running statistics are state, never parameters: one mean and var per BN scale.
    bn_features = sum(v["scale"].shape[0] for _, v in _walk(params) if "scale" in v)
    assert _count(state) == 2 * bn_features


def _walk(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield prefix + "/" + k, v
            yield from _walk(v, prefix + "/" + k)


@pytest.mark.slow
def test_resnet50_param_count_with_init_by_shape():
    # Compiles all the initializers (10-50 s on a small, busy CPU), hence slow.
    with nn.stateful():
        out, params = models.ResNet50.init_by_shape(jax.random.key(0, impl="rbg"),
                                                    [((1, 64, 64, 3), jnp.float32)])
    assert _count(params) == 25_557_032
    assert out.shape == (1, 1000) and out.dtype == jnp.float32


def test_resnet50_layout():
    def init(rng):
        return models.ResNet50.init_with_state(rng, jnp.zeros((1, 32, 32, 3)))[1]

    params = jax.eval_shape(init, jax.random.PRNGKey(0))
    blocks = [f"BottleneckBlock_{i}" for i in range(16)]
    assert sorted(params) == sorted(["init_conv", "init_bn", "Dense_16", *blocks])
    assert sorted(params["BottleneckBlock_0"]) == [
        "bn1", "bn2", "bn3", "conv1", "conv2", "conv3", "proj_bn", "proj_conv"]
    assert "proj_conv" not in params["BottleneckBlock_1"]
    assert params["init_conv"]["kernel"].shape == (7, 7, 3, 64)
    assert list(params["init_conv"]) == ["kernel"]  # convolutions have no bias
    assert params["BottleneckBlock_3"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
    assert params["Dense_16"]["kernel"].shape == (2048, 1000)


def _tiny(**kw):
    # Two stages of one basic block: every code path of the family, cheap to compile.
    return models.ResNet.partial(num_classes=5, num_filters=4, stage_sizes=(1, 1),
                                 bottleneck=False, **kw)


@pytest.fixture(scope="module")
def tiny_init():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
    out, params, state = jax.jit(_tiny().init_with_state)(jax.random.key(0, impl="rbg"), x)
    return x, out, params, state


def test_forward_shapes_train_and_eval(tiny_init):
    x, out, params, state = tiny_init
    model = _tiny()
    assert out.shape == (2, 5) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.exp(np.asarray(out)).sum(-1), 1.0, rtol=1e-5)
    assert sorted(params) == ["BasicBlock_0", "BasicBlock_1", "Dense_2", "init_bn",
                              "init_conv"]

    @jax.jit
    def train_then_eval(params, state, x):
        _, new_state = model.call_with_state(params, state, x, train=True)
        y, _ = model.call_with_state(params, new_state, x, train=False, _mutable=False)
        return new_state, y

    new_state, y_eval = train_then_eval(params, state, x)
    changed = [not np.allclose(a, b) for a, b in
               zip(jax.tree.leaves(state), jax.tree.leaves(new_state))]
    assert all(changed)  # every running average moved in training
    assert y_eval.shape == (2, 5)


def test_zero_init_last_bn_makes_blocks_identity(rng):
    x = jax.random.normal(rng, (2, 8, 8, 4))
    block = models.BasicBlock.partial(filters=4)
    out, params, _ = block.init_with_state(rng, x)
    np.testing.assert_array_equal(params["bn2"]["scale"], np.zeros(4, np.float32))
    np.testing.assert_allclose(out, jax.nn.relu(x), rtol=1e-6)
    _, params, _ = block.init_with_state(rng, x, zero_init_last_bn=False)
    np.testing.assert_array_equal(params["bn2"]["scale"], np.ones(4, np.float32))


def test_bfloat16_compute_float32_params(tiny_init):
    x, _, params, state = tiny_init

    @jax.jit
    def run(x):
        out, new_state = _tiny(dtype=jnp.bfloat16).call_with_state(params, state, x)
        ref, _ = _tiny().call_with_state(params, state, x)
        return out, ref, new_state

    out, ref, new_state = run(x)
    assert {leaf.dtype for leaf in jax.tree.leaves(new_state)} == {jnp.dtype(jnp.float32)}
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, atol=0.1)


def test_small_inputs_stem_keeps_resolution(rng):
    def init(x):
        return _tiny(small_inputs=True).init_with_state(rng, x)[1]

    params = jax.eval_shape(init, jnp.zeros((1, 28, 28, 1)))
    assert params["init_conv"]["kernel"].shape == (3, 3, 1, 4)


def test_rank_error_names_module(rng):
    with pytest.raises(ShapeError, match="ResNet.*rank 4"):
        _tiny().init_with_state(rng, jnp.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match="resnet18"):
        models.get_model("resnet19")


def _bn_ref(x, scale, bias, eps=1e-5):
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _conv_ref(x, kernel, stride, pad):
    return np.asarray(jax.lax.conv_general_dilated(
        jnp.asarray(x), jnp.asarray(kernel), (stride, stride), [(pad, pad), (pad, pad)],
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"))


def test_basic_block_against_lax_and_numpy(rng):
    x = np.asarray(jax.random.normal(rng, (2, 6, 6, 3)), np.float64)
    block = models.BasicBlock.partial(filters=4, strides=(2, 2), zero_init_last_bn=False)
    _, params, state = block.init_with_state(rng, jnp.asarray(x, jnp.float32))
    # Random BN scales and biases so the test sees them.
    keys = iter(jax.random.split(rng, 10))
    params = jax.tree.map(lambda p: p if p.ndim > 1 else
                          jax.random.uniform(next(keys), p.shape, jnp.float32, 0.5, 1.5), params)
    got, _ = block.call_with_state(params, state, jnp.asarray(x, jnp.float32))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    y = _conv_ref(x, p["conv1"]["kernel"], 2, 1)
    y = np.maximum(_bn_ref(y, p["bn1"]["scale"], p["bn1"]["bias"]), 0)
    y = _conv_ref(y, p["conv2"]["kernel"], 1, 1)
    y = _bn_ref(y, p["bn2"]["scale"], p["bn2"]["bias"])
    r = _conv_ref(x, p["proj_conv"]["kernel"], 2, 0)
    r = _bn_ref(r, p["proj_bn"]["scale"], p["proj_bn"]["bias"])
    want = np.maximum(r + y, 0)
    assert got.shape == (2, 3, 3, 4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_batchnorm_axis_name_synchronises_across_devices(tiny_init):
    """Under shard_map with ``axis_name``, 8 devices of 1 image each see the statistics of
    the whole batch: the same outputs and running averages as one device with all 8."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    _, _, params, state = tiny_init
    x = jax.random.normal(jax.random.PRNGKey(2), (8, 16, 16, 3))
    mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))

    def per_device(axis_name):
        def run(params, state, x):
            return _tiny(axis_name=axis_name).call_with_state(params, state, x, train=True)
        return jax.jit(jax.shard_map(run, mesh=mesh, in_specs=(P(), P(), P("batch")),
                                     out_specs=(P("batch"), P()), check_vma=False))

    want, want_state = jax.jit(lambda p, s, x: _tiny().call_with_state(p, s, x))(
        params, state, x)
    got, got_state = per_device("batch")(params, state, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    _assert_close_trees(got_state, want_state)
    # Without axis_name each device normalises its single image on its own: different.
    alone, _ = per_device(None)(params, state, x)
    assert not np.allclose(alone, want, atol=1e-2)


def _assert_close_trees(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=1e-5)
