"""flaxen.training.lr_schedule against NumPy formulas (reference section 4.7)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen.errors import FlaxenError
from flaxen.training import lr_schedule

STEPS = np.arange(0, 400, 7)


def _warm(step, spe, warmup):
    return np.minimum(1.0, step / warmup / spe) if warmup > 0 else 1.0


@pytest.mark.parametrize("warmup", [0.0, 2.0])
def test_constant(warmup):
    fn = lr_schedule.create_constant_learning_rate_schedule(0.1, 10, warmup)
    got = np.array([fn(s) for s in STEPS])
    np.testing.assert_allclose(got, 0.1 * _warm(STEPS, 10, warmup), rtol=1e-6)


@pytest.mark.parametrize("warmup", [0.0, 1.5])
def test_stepped(warmup):
    sched = [[3, 0.1], [6.04, 0.01], [30, 0.001]]
    fn = lr_schedule.create_stepped_learning_rate_schedule(0.5, 50, sched, warmup)
    bounds = np.round(np.array([3, 6.04, 30]) * 50)
    values = 0.5 * np.array([1, 0.1, 0.01, 0.001])
    want = values[(bounds[None, :] < STEPS[:, None]).sum(1)] * _warm(STEPS, 50, warmup)
    got = jax.jit(jax.vmap(fn))(jnp.asarray(STEPS, jnp.int32))  # traced steps work
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert float(fn(150)) == pytest.approx(0.5) and float(fn(151)) == pytest.approx(0.05)


@pytest.mark.parametrize("warmup", [0.0, 3.0])
def test_cosine(warmup):
    fn = lr_schedule.create_cosine_learning_rate_schedule(0.2, 20, 15, warmup)
    want = 0.2 * (0.5 + 0.5 * np.cos(np.pi * STEPS / (15 * 20))) * _warm(STEPS, 20, warmup)
    np.testing.assert_allclose(np.array([fn(s) for s in STEPS]), want, rtol=1e-5, atol=1e-7)


def test_bad_arguments():
    with pytest.raises(FlaxenError, match="steps_per_epoch"):
        lr_schedule.create_constant_learning_rate_schedule(0.1, 0)
    with pytest.raises(FlaxenError, match="epoch, factor"):
        lr_schedule.create_stepped_learning_rate_schedule(0.1, 10, [[1, 2, 3]])
    with pytest.raises(FlaxenError, match="halfcos_epochs"):
        lr_schedule.create_cosine_learning_rate_schedule(0.1, 10, 0)
