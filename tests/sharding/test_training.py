"""Training with sharded parameters gives the replicated run's losses; the compiled step
holds the collectives each layout needs."""

from __future__ import annotations

import collections
import re

import jax
import numpy as np
import pytest

from flaxen import parallel, sharding
from tests.sharding import lm

STEPS = 50
NUM_LAYERS = 2


def collectives(optimizer, mesh, step) -> collections.Counter:
    """How many times each collective op appears in the compiled step's HLO."""
    batch = parallel.shard_batch(lm.batches(1)[0], mesh)
    text = step.lower(optimizer, batch).compile().as_text()
    ops = r"all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute"
    return collections.Counter(m.group(1) for m in re.finditer(rf"\s({ops})(?:-start)?\(", text))


@pytest.fixture(scope="module")
def replicated():
    mesh = parallel.default_mesh()
    start = lm.create_optimizer(NUM_LAYERS)
    final, losses, step = lm.losses(start.replicate(mesh), mesh, lm.batches(STEPS))
    return start, final, losses, collectives(start.replicate(mesh), mesh, step)


def _run(replicated, mesh, rules):
    start, final, want, _ = replicated
    placed = start.shard(mesh, rules)
    got_final, got, step = lm.losses(placed, mesh, lm.batches(STEPS))
    # The layout survives the step (XLA keeps each output where its input was).
    for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(got_final)):
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
    assert want[-1] < want[0] - 1.0  # it learns, so equal losses mean something
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Parameters agree up to Adam's amplification of rounding where gradients are ~0
    # (normalised updates of size ~lr whatever the gradient's magnitude).
    for a, b in zip(jax.tree.leaves(final.target), jax.tree.leaves(got_final.target)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3)
    return placed, step


def test_fully_sharded_trains_like_replicated(replicated):
    mesh = sharding.make_mesh(8)
    placed, step = _run(replicated, mesh, sharding.fully_sharded())
    counts = collectives(placed, mesh, step)
    n_split = sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(placed.target))
    # Every split parameter is gathered before use; the replicated step gathers nothing.
    assert n_split >= 20
    assert counts["all-gather"] >= n_split, counts
    assert replicated[3]["all-gather"] == 0


def test_tensor_parallel_trains_like_replicated_with_four_all_reduces_per_block(replicated):
    mesh = sharding.make_mesh(1, 8)
    placed, step = _run(replicated, mesh, sharding.tensor_parallel())
    counts = collectives(placed, mesh, step)
    # Megatron: per block one all-reduce after attention and one after the MLP, forward
    # and backward; weights are never gathered.
    assert counts["all-reduce"] == 4 * NUM_LAYERS, counts
    assert counts["all-gather"] == 0, counts


def test_tensor_parallel_with_data_parallel_adds_the_gradient_all_reduce(replicated):
    mesh = sharding.make_mesh(2, 4)
    placed, step = _run(replicated, mesh, sharding.tensor_parallel())
    counts = collectives(placed, mesh, step)
    assert counts["all-reduce"] >= 4 * NUM_LAYERS + 1, counts
    assert counts["all-gather"] == 0, counts
