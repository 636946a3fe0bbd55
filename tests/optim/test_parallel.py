"""Data-parallel training with jit over a mesh of 8 simulated devices (no pmap)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import errors, nn, optim, parallel

STEPS = 20


class MLP(nn.Module):
    def apply(self, x):
        return nn.Dense(jnp.tanh(nn.Dense(x, features=8)), features=2)


class BNNet(nn.Module):
    def apply(self, x, train=True):
        x = nn.Dense(x, features=8)
        x = nn.BatchNorm(x, use_running_average=not train, momentum=0.9)
        return nn.Dense(jnp.tanh(x), features=2)


def _batches():
    keys = jax.random.split(jax.random.PRNGKey(7), STEPS)
    xs = [jax.random.normal(k, (16, 3)) for k in keys]
    return [(x, jnp.stack([jnp.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1)) for x in xs]


@jax.jit
def _train_step(optimizer, x, y):
    def loss_fn(model):
        pred = model(x)
        return jnp.mean(jnp.square(pred - y)), pred

    optimizer, loss, _ = optimizer.optimize(loss_fn)
    return optimizer, loss


@jax.jit
def _bn_train_step(optimizer, state, x, y):
    def loss_fn(model):
        pred, new_state = model.call_with_state(state, x)
        return jnp.mean(jnp.square(pred - y)), new_state

    optimizer, loss, new_state = optimizer.optimize(loss_fn)
    return optimizer, new_state, loss


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6)


def test_eight_devices():
    assert jax.device_count() == 8, "tests need the 8 simulated devices of conftest.py"
    assert parallel.default_mesh().shape == {"batch": 8}
    assert parallel.default_mesh() is parallel.default_mesh()


@pytest.mark.parametrize("opt_def", [optim.Momentum(0.1, beta=0.9), optim.Adam(0.01)],
                         ids=["momentum", "adam"])
def test_data_parallel_equals_single_device(opt_def, rng):
    batches = _batches()
    _, model = MLP.create(rng, batches[0][0])
    single = opt_def.create(model)
    for x, y in batches:
        single, _ = _train_step(single, x, y)

    mesh = parallel.default_mesh()
    multi = opt_def.create(model).replicate(mesh)
    for x, y in batches:
        xs, ys = parallel.shard_batch((x, y), mesh)
        assert len(xs.sharding.device_set) == 8
        multi, loss = _train_step(multi, xs, ys)
    kernel = multi.target.params["Dense_0"]["kernel"]
    assert kernel.sharding.is_fully_replicated and len(kernel.sharding.device_set) == 8
    back = multi.unreplicate()
    assert len(back.target.params["Dense_0"]["kernel"].sharding.device_set) == 1
    assert int(back.state.step) == STEPS
    _close(back.target, single.target)
    _close(back.state, single.state)


def test_data_parallel_batchnorm_equals_single_device(rng):
    batches = _batches()
    _, params, state0 = BNNet.init_with_state(rng, batches[0][0])
    opt0 = optim.Momentum(0.1).create(nn.Model(BNNet, params))

    single, s_state = opt0, state0
    for x, y in batches:
        single, s_state, _ = _bn_train_step(single, s_state, x, y)

    multi, m_state = parallel.replicate((opt0, state0))
    for x, y in batches:
        multi, m_state, _ = _bn_train_step(multi, m_state, *parallel.shard_batch((x, y)))
    multi, m_state = parallel.unreplicate((multi, m_state))
    _close(multi.target, single.target)
    _close(m_state, s_state)
    assert not np.allclose(jax.tree.leaves(s_state)[0], jax.tree.leaves(state0)[0])


def test_replicated_model_for_evaluation(rng):
    x, _ = _batches()[0]
    _, model = MLP.create(rng, x)
    want = model(x)
    rep = parallel.replicate(model)
    got = jax.jit(lambda m, x: m(x))(rep, parallel.shard_batch(x))
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    back = parallel.unreplicate(rep)
    assert isinstance(back, nn.Model)


def test_shard_batch_errors():
    with pytest.raises(errors.BatchShardingError, match=r"leading dimension is 12.*8 devices"):
        parallel.shard_batch({"image": jnp.ones((12, 2))})
    with pytest.raises(errors.BatchShardingError, match=r'at "label"'):
        parallel.shard_batch({"image": jnp.ones((16, 2)), "label": jnp.ones((10,))})
    with pytest.raises(errors.ReplicationError, match="scalar"):
        parallel.shard_batch({"n": jnp.ones(())})
    with pytest.raises(errors.ReplicationError, match="no axis named"):
        parallel.shard_batch(jnp.ones((8,)), parallel.default_mesh(), axis_name="data")


def test_custom_mesh_axis_and_subset_of_devices():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
    xs = parallel.shard_batch(np.ones((8, 2), np.float32), mesh, axis_name="data")
    assert len(xs.sharding.device_set) == 4
    rep = parallel.replicate({"w": np.ones(3, np.float32)}, mesh)
    assert len(rep["w"].sharding.device_set) == 4
    np.testing.assert_array_equal(parallel.unreplicate(rep)["w"], np.ones(3))


def test_two_axis_mesh_splits_only_the_batch_axis():
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("batch", "model"))
    xs = parallel.shard_batch(np.arange(16.0, dtype=np.float32).reshape(8, 2), mesh)
    assert xs.sharding.spec == jax.sharding.PartitionSpec("batch")
    assert {s.data.shape for s in xs.addressable_shards} == {(2, 2)}
    rep = parallel.replicate(optim.Adam(0.1).create({"w": np.ones(3, np.float32)}), mesh)
    assert rep.target["w"].sharding.is_fully_replicated
    assert len(rep.target["w"].sharding.device_set) == 8
