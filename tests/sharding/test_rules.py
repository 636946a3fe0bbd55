"""Sharding rules: specs by path, the two shipped rule sets, errors, and optimizer state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from flaxen import errors, nn, optim, parallel, sharding, traverse_util
from flaxen.optim import sharded
from tests.sharding.lm import tiny_lm_params


@pytest.fixture(scope="module")
def lm_params():
    return tiny_lm_params(num_layers=2)


def test_first_matching_rule_wins_and_the_rest_is_replicated():
    mesh = sharding.make_mesh(4, 2)
    params = {"a": {"kernel": jnp.ones((8, 6))}, "b": {"kernel": jnp.ones((8, 6))},
              "c": jnp.ones(3)}
    rules = [("a/kernel", P("batch", "model")), ("kernel", P(None, "model"))]
    specs = sharding.param_specs(params, mesh, rules)
    assert specs == {"a": {"kernel": P("batch", "model")}, "b": {"kernel": P(None, "model")},
                     "c": P()}


def test_largest_divisible_dim_and_trailing_alignment():
    mesh = sharding.make_mesh(8)
    fsdp = sharding.LargestDim("batch")
    assert fsdp((4, 64, 16), mesh) == P(None, "batch", None)
    assert fsdp((12, 5), mesh) == P()  # nothing divisible by 8: replicated
    assert fsdp((), mesh) == P()
    t = sharding.Trailing("model", None)
    assert t((64, 8, 16), mesh) == P(None, "model", None)
    assert t((24, 64, 8, 16), mesh) == P(None, None, "model", None)


def test_tensor_parallel_rules_split_heads_and_hidden_units(lm_params):
    mesh = sharding.make_mesh(2, 4)
    specs = sharding.param_specs(lm_params, mesh, sharding.tensor_parallel())
    att = specs["block_0"]["attention"]
    assert att["query"]["kernel"] == P(None, "model", None)  # [features, heads, head_dim]
    assert att["value"]["bias"] == P("model", None)
    assert att["out"]["kernel"] == P("model", None, None)  # [heads, head_dim, features]
    assert att["out"]["bias"] == P()
    assert specs["block_1"]["mlp"]["Dense_0"]["kernel"] == P(None, "model")
    assert specs["block_1"]["mlp"]["Dense_0"]["bias"] == P("model")
    assert specs["block_1"]["mlp"]["Dense_1"]["kernel"] == P("model", None)
    assert specs["embed"]["embedding"] == P()
    assert specs["block_0"]["ln_attn"]["scale"] == P()


@pytest.mark.parametrize("rule, message", [
    (("kernel", P("model")), "the mesh has no axis 'model' (its axes: {'batch': 8})"),
    (("kernel", P(None, None, "batch")), "has 3 entries but the parameter has rank 2"),
    (("kernel", P(None, "batch")), "dimension 1 (size 6) is not divisible by the 8 devices"),
    (("kernel", P("batch", "batch")), "the axis 'batch' is used twice"),
])
def test_rule_errors_name_the_param_its_shape_and_the_rule(rule, message):
    mesh = parallel.default_mesh()
    with pytest.raises(errors.ShardingRuleError) as e:
        sharding.param_specs({"Dense_0": {"kernel": jnp.ones((16, 6))}}, mesh, [rule])
    text = str(e.value)
    assert 'parameter "Dense_0/kernel" of shape (16, 6)' in text
    assert repr(rule[0]) in text and message in text


def test_a_rule_that_is_not_a_pair_is_refused():
    with pytest.raises(errors.ShardingRuleError, match="must be a \\(pattern, spec\\) pair"):
        sharding.spec_for("w", (8,), sharding.make_mesh(8), [P("batch")])  # type: ignore[list-item]


def test_make_mesh_needs_enough_devices():
    with pytest.raises(errors.ShardingRuleError, match="a 4 x 4 mesh needs 16 devices"):
        sharding.make_mesh(4, 4)


def _model_leaves(optimizer):
    return jax.tree_util.tree_flatten_with_path(optimizer)[0]


OPTIMIZERS = {
    "adam": lambda: optim.Adam(1e-3),
    "momentum": lambda: optim.Momentum(0.1, beta=0.9),
    "multi": lambda: optim.MultiOptimizer(
        (optim.ModelParamTraversal(lambda p, v: np.ndim(v) >= 2), optim.Adam(1e-3)),
        (optim.ModelParamTraversal(lambda p, v: np.ndim(v) < 2), optim.Momentum(0.1))),
    "optax": lambda: optim.Optax(optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3))),
    "adafactor": lambda: optim.Adafactor(1e-3),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_leaves_shaped_like_a_param_follow_its_spec(name, lm_params):
    mesh = sharding.make_mesh(8)
    rules = sharding.fully_sharded()
    model = nn.Model(nn.Module, lm_params)
    opt = OPTIMIZERS[name]().create(model).shard(mesh, rules)
    want = sharding.param_specs(lm_params, mesh, rules)
    by_path = {tuple(s for s in traverse_util.path_to_str(p).split("/") if s): (x.shape, spec)
               for p, x, spec in zip(*zip(*_model_leaves(lm_params)),
                                     jax.tree.leaves(want, is_leaf=lambda s: isinstance(s, P)))}
    n_following = 0
    for path, leaf in _model_leaves(opt):
        names = tuple(s for s in traverse_util.path_to_str(path).split("/") if s)
        match = [v for k, v in by_path.items()
                 if len(k) <= len(names) and any(names[i:i + len(k)] == k
                                                 for i in range(len(names)))]
        match = [spec for shape, spec in match if shape == leaf.shape]
        if match:
            assert leaf.sharding.is_equivalent_to(
                jax.sharding.NamedSharding(mesh, match[0]), leaf.ndim), path
            n_following += 1
        else:  # step counts, hyper-parameters, factored statistics
            assert leaf.sharding.is_fully_replicated, (path, leaf.sharding)
    n_params = len(jax.tree.leaves(lm_params))
    assert n_following >= 2 * n_params  # the target and at least one state leaf per param


def test_fully_sharded_adam_holds_one_eighth_per_device(lm_params):
    opt = optim.Adam(1e-3).create(nn.Model(nn.Module, lm_params))
    placed = opt.shard(sharding.make_mesh(8), sharding.fully_sharded())
    total = sharding.total_bytes(opt)
    per_device = sharding.bytes_per_device(placed)
    assert len(per_device) == 8
    assert max(per_device.values()) <= total / 8 * 1.05, (total, per_device)
    replicated = sharding.bytes_per_device(opt.replicate())
    assert min(replicated.values()) == total  # the comparison: a full copy everywhere


def test_create_sharded_never_builds_a_full_copy_and_equals_shard(lm_params):
    mesh = sharding.make_mesh(8)
    rules = sharding.fully_sharded()

    def create():
        return optim.Adam(1e-3).create(nn.Model(nn.Module, lm_params))

    direct = sharded.create_sharded(create, mesh, rules)
    placed = create().shard(mesh, rules)
    for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(placed)):
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
        np.testing.assert_array_equal(a, b)


def test_constrain_pins_the_layout_inside_jit(lm_params):
    mesh = sharding.make_mesh(8)
    rules = sharding.fully_sharded()

    @jax.jit
    def create():
        opt = optim.Adam(1e-3).create(nn.Model(nn.Module, lm_params))
        return sharded.constrain(opt, mesh, rules)

    out = create()
    want = sharded.optimizer_shardings(out, mesh, rules)
    for x, s in zip(jax.tree.leaves(out), jax.tree.leaves(want)):
        assert x.sharding.is_equivalent_to(s, x.ndim)
    assert not out.target.params["embed"]["embedding"].sharding.is_fully_replicated
