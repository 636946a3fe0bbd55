"""Checkpoints of sharded optimizers restore onto other meshes with the same values."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from flaxen import errors, optim, parallel, sharding
from flaxen.training import checkpoints, sharded_checkpoints
from tests.sharding import lm


def _multi_adam(num_layers: int = 2) -> optim.Optimizer:
    """The LM example's optimizer layout: AdamW on matrices, Adam on vectors."""
    base = lm.create_optimizer(num_layers)
    opt_def = optim.MultiOptimizer(
        (optim.ModelParamTraversal(lambda p, v: np.ndim(v) >= 2),
         optim.Adam(1e-3, weight_decay=0.1)),
        (optim.ModelParamTraversal(lambda p, v: np.ndim(v) < 2), optim.Adam(1e-3)))
    return opt_def.create(base.target)


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A fully sharded optimizer after 3 steps on 8 devices, and its checkpoint dir."""
    mesh = sharding.make_mesh(8)
    opt = _multi_adam().shard(mesh, sharding.fully_sharded())
    opt, _, _ = lm.losses(opt, mesh, lm.batches(3))
    ckpt = tmp_path_factory.mktemp("ckpt")
    checkpoints.save_checkpoint(ckpt, opt, step=3)
    return opt, ckpt


@pytest.mark.parametrize("devices, model, rules", [
    (4, 1, sharding.fully_sharded()),
    (1, 1, sharding.fully_sharded()),
    (2, 4, sharding.tensor_parallel()),
])
def test_restore_onto_another_mesh_gives_the_same_values(trained_checkpoint, devices, model,
                                                         rules):
    saved, ckpt = trained_checkpoint
    mesh = sharding.make_mesh(devices, model)
    template = jax.eval_shape(_multi_adam)  # abstract: nothing allocated before the read
    restored = sharded_checkpoints.restore_sharded(ckpt, template, mesh=mesh, rules=rules)
    want = sharded_checkpoints.target_shardings(template, mesh, rules)
    assert int(restored.state.step) == 3
    for a, b, s in zip(jax.tree.leaves(saved), jax.tree.leaves(restored),
                       jax.tree.leaves(want)):
        assert b.sharding.is_equivalent_to(s, b.ndim)
        assert b.sharding.mesh.size == devices * model
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_takes_explicit_shardings_and_training_continues(trained_checkpoint):
    saved, ckpt = trained_checkpoint
    mesh = sharding.make_mesh(4)
    template = _multi_adam()
    shardings = sharded_checkpoints.target_shardings(template, mesh, sharding.fully_sharded())
    restored = sharded_checkpoints.restore_sharded(ckpt, template, shardings)
    # The restored optimizer trains on the new mesh like the saved one on the old mesh.
    data = lm.batches(2, seed=1)
    _, want, _ = lm.losses(saved, sharding.make_mesh(8), data)
    _, got, _ = lm.losses(restored, mesh, data)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_restore_sharded_needs_a_layout_and_a_checkpoint(tmp_path):
    opt = lm.create_optimizer(1)
    with pytest.raises(errors.CheckpointError, match="give either `shardings=`"):
        sharded_checkpoints.restore_sharded(tmp_path, opt)
    with pytest.raises(errors.CheckpointNotFoundError, match="No checkpoint"):
        sharded_checkpoints.restore_sharded(tmp_path, opt, mesh=parallel.default_mesh(),
                                            rules=sharding.fully_sharded())
