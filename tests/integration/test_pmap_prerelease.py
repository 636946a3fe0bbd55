"""The pre-release data-parallel loop, unchanged: jax.pmap + jax_utils.replicate.

A small ResNet with ``BatchNorm(axis_name='batch')`` trains with the May-2020 recipe
(``jax_utils.replicate``, ``jax.pmap(train_step, axis_name='batch')`` with
``lax.pmean(grads, 'batch')``, ``common_utils.shard``, ``jax_utils.unreplicate``,
``save_checkpoint`` of the unreplicated state and ``restore_checkpoint`` at a restart)
on the 8 simulated devices, and must match the same loop on one device.

Tolerance: rtol 1e-4 / atol 1e-5 on every parameter and statistic. On 8 devices each
BatchNorm mean, each loss and each gradient is a sum of 8 per-device float32 partial sums
(``pmean``) instead of one sum over the 16 examples; that reorders float32 additions
(relative error ~1e-7 each), and four SGD steps through BatchNorm's rsqrt amplify it to
at most ~1e-5. A semantic error (per-device BatchNorm statistics, a gradient summed
instead of averaged, a lost checkpoint step) changes values by 1e-2 or more.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from flaxen import errors, jax_utils, nn, optim, struct
from flaxen.training import checkpoints, common_utils

NUM_CLASSES = 4


class ResidualBlock(nn.Module):
    def apply(self, x, features, train=True):
        bn = nn.BatchNorm.partial(use_running_average=not train, momentum=0.9,
                                  axis_name="batch")
        y = nn.relu(bn(nn.Conv(x, features, (3, 3), bias=False, name="conv1"), name="bn1"))
        y = bn(nn.Conv(y, features, (3, 3), bias=False, name="conv2"), name="bn2")
        return nn.relu(x + y)


class ResNet(nn.Module):
    def apply(self, x, train=True):
        x = nn.Conv(x, 8, (3, 3), bias=False, name="init_conv")
        x = nn.BatchNorm(x, use_running_average=not train, momentum=0.9, axis_name="batch",
                         name="init_bn")
        x = ResidualBlock(nn.relu(x), 8, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(x, NUM_CLASSES)


@struct.dataclass
class TrainState:
    step: int
    optimizer: optim.Optimizer
    model_state: nn.Collection


def train_step(state, batch):
    def loss_fn(model):
        with nn.stateful(state.model_state) as new_model_state:
            logits = model(batch["image"])
        labels = common_utils.onehot(batch["label"], NUM_CLASSES)
        loss = -jnp.mean(jnp.sum(labels * nn.log_softmax(logits), axis=-1))
        return loss, new_model_state

    (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.optimizer.target)
    grads = lax.pmean(grads, "batch")
    optimizer = state.optimizer.apply_gradient(grads)
    metrics = {"loss": lax.pmean(loss, "batch")}
    new_state = state.replace(step=state.step + 1, optimizer=optimizer,
                              model_state=new_model_state)
    return new_state, metrics


def _batches(steps, global_batch=16):
    rng = np.random.RandomState(0)
    for _ in range(steps):
        yield {"image": rng.normal(size=(global_batch, 6, 6, 3)).astype(np.float32),
               "label": rng.randint(0, NUM_CLASSES, size=(global_batch,)).astype(np.int32)}


def _initial_state():
    with nn.stateful() as init_state:
        _, params = ResNet.init(jax.random.PRNGKey(0), jnp.ones((2, 6, 6, 3)))
    optimizer = optim.Momentum(learning_rate=0.1, beta=0.9).create(nn.Model(ResNet, params))
    return TrainState(step=0, optimizer=optimizer, model_state=init_state)


def _train(devices, ckpt_dir, steps=4, restart_at=2):
    """The pre-release loop; it 'restarts' after ``restart_at`` steps from the checkpoint."""
    n = len(devices)
    p_train_step = jax.pmap(train_step, axis_name="batch", devices=devices)
    state = jax_utils.replicate(_initial_state(), devices)
    all_metrics = []
    for i, batch in enumerate(_batches(steps)):
        if i == restart_at:  # a new process: template, restore, replicate again
            host = jax_utils.unreplicate(state)
            checkpoints.save_checkpoint(ckpt_dir, jax.device_get(host), int(host.step))
            del state
            # An int32 step in the template: restoring a stored 0-d array into a Python
            # int template leaf is issue #12 item 4 (another branch).
            template = _initial_state().replace(step=jnp.zeros((), jnp.int32))
            state = checkpoints.restore_checkpoint(ckpt_dir, template)
            assert int(state.step) == restart_at
            state = jax_utils.replicate(state, devices)
        batch = jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]), batch)
        state, metrics = p_train_step(state, batch)
        all_metrics.append(metrics)
    return jax_utils.unreplicate(state), common_utils.get_metrics(all_metrics)


def test_pmap_loop_on_8_devices_matches_one_device(tmp_path):
    devices = jax.local_devices()
    assert len(devices) == 8, "needs the 8 simulated devices of conftest.py"
    many, many_metrics = _train(devices, tmp_path / "eight")
    one, one_metrics = _train(devices[:1], tmp_path / "one")
    assert int(many.step) == int(one.step) == 4
    assert many_metrics["loss"].shape == (4,)
    np.testing.assert_allclose(many_metrics["loss"], one_metrics["loss"], rtol=1e-4)
    flat_many = jax.tree_util.tree_flatten_with_path(many)[0]
    flat_one = jax.tree.leaves(one)
    assert len(flat_many) == len(flat_one)
    for (path, a), b in zip(flat_many, flat_one):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5,
                                   err_msg=jax.tree_util.keystr(path))
    # Training happened and the statistics moved (not a vacuous comparison).
    start = _initial_state()
    assert not np.allclose(many.optimizer.target.params["Dense_1"]["kernel"],
                           start.optimizer.target.params["Dense_1"]["kernel"])
    assert not np.allclose(many.model_state["/init_bn"]["mean"], 0.0)


def test_common_utils_shard_feeds_pmap():
    n = jax.local_device_count()
    batch = common_utils.shard({"x": np.arange(4 * n, dtype=np.float32)})
    assert batch["x"].shape == (n, 4)
    out = jax.pmap(lambda x: lax.psum(jnp.sum(x), "i"), axis_name="i")(batch["x"])
    np.testing.assert_allclose(jax_utils.unreplicate(out), np.sum(np.arange(4 * n)))
    keys = common_utils.shard_prng_key(jax.random.PRNGKey(1))
    assert keys.shape[0] == n


def test_replicate_layout_is_pmaps_own():
    """pmap takes a replicated tree without any transfer (no copy)."""
    tree = {"w": jnp.arange(3.0), "step": 0}
    rep = jax_utils.replicate(tree)
    n = jax.local_device_count()
    assert rep["w"].shape == (n, 3) and rep["step"].shape == (n,)
    f = jax.pmap(lambda t: jax.tree.map(lambda x: x + 1, t))
    with jax.transfer_guard("disallow"):
        out = f(rep)
    np.testing.assert_array_equal(jax_utils.unreplicate(out)["w"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(jax_utils.unreplicate(rep)["step"], 0)


def test_replicate_misuse_errors():
    rep = jax_utils.replicate({"w": jnp.ones(2)})
    with pytest.raises(errors.ReplicationError, match="already replicated"):
        jax_utils.replicate(rep)
    with pytest.raises(errors.ReplicationError, match="not replicated"):
        jax_utils.unreplicate({"w": jnp.ones(2)})
    from flaxen import parallel
    with pytest.raises(errors.ReplicationError, match="parallel.unreplicate"):
        jax_utils.unreplicate(parallel.replicate({"w": jnp.ones(2)}))
    with pytest.raises(errors.ReplicationError, match="expected an array"):
        jax_utils.replicate({"name": "abc"})


def test_optimizer_replicate_both_paths():
    from jax.sharding import PartitionSpec as P

    opt = optim.GradientDescent(learning_rate=0.5).create({"w": jnp.ones(2)})
    mesh_rep = opt.replicate()  # flaxen: jit over a Mesh
    assert mesh_rep.target["w"].sharding.spec == P()
    pm = opt.replicate(axis_name="batch")  # pre-release: ReplicatedOptimizer for pmap
    n = jax.local_device_count()
    assert pm.target["w"].shape == (n, 2)
    grads = jnp.arange(n, dtype=jnp.float32)[:, None] * jnp.ones((n, 2))
    step = jax.pmap(lambda o, g: o.apply_gradient({"w": g}), axis_name="batch")
    back = step(pm, grads).unreplicate()
    assert type(back.optimizer_def) is optim.GradientDescent
    # The gradient is averaged over devices: mean(0..n-1) = (n-1)/2.
    np.testing.assert_allclose(back.target["w"], 1.0 - 0.5 * (n - 1) / 2)
    with pytest.raises(errors.ReplicationError, match="already replicated"):
        pm.replicate(axis_name="batch")
    with pytest.raises(errors.ReplicationError, match="inside `jax.pmap"):
        pm.apply_gradient({"w": grads})  # outside pmap: no axis to average over
    stacked = jax_utils.replicate(opt)  # the May-2020 spelling
    np.testing.assert_array_equal(stacked.unreplicate().target["w"], [1.0, 1.0])


def test_prefetch_to_device_feeds_pmap_with_the_pre_release_keyword():
    n = jax.local_device_count()
    batches = [common_utils.shard({"x": np.full((2 * n, 3), i, np.float32)}) for i in range(3)]
    f = jax.pmap(lambda b: jnp.sum(b["x"]))
    got = []
    for batch in jax_utils.prefetch_to_device(iter(batches), 2, devices=jax.local_devices()):
        assert jax_utils.is_stacked(batch["x"])
        with jax.transfer_guard("disallow"):
            got.append(jax_utils.unreplicate(f(batch)))
    np.testing.assert_allclose(got, [0.0, 6.0, 12.0])
