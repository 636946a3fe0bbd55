"""Dropout: statistics, scaling, key handling, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import nn
from flaxen.errors import LayerArgumentError, MissingRngError


def test_dropout_scales_and_drops_at_rate(rng):
    x = jnp.ones((100, 100))
    y = nn.dropout(x, 0.3, rng=rng)
    yn = np.asarray(y)
    kept = yn != 0
    np.testing.assert_allclose(yn[kept], 1 / 0.7, rtol=1e-6)
    assert abs(kept.mean() - 0.7) < 0.02


def test_dropout_deterministic_and_zero_rate(rng):
    x = jnp.arange(4.0)
    assert nn.dropout(x, 0.5, deterministic=True) is x
    assert nn.dropout(x, 0.0) is x


def test_two_layers_get_different_keys(rng):
    class Net(nn.Module):
        def apply(self, x):
            return nn.dropout(x, 0.5), nn.dropout(x, 0.5)

    _, params = Net.init(rng, jnp.ones((64,)))
    a, b = Net.call(params, jnp.ones((64,)), _rng=jax.random.PRNGKey(3))
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    a2, _ = Net.call(params, jnp.ones((64,)), _rng=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))


def test_dropout_errors(rng):
    with pytest.raises(LayerArgumentError, match=r"rate.*\[0, 1\).*1\.0"):
        nn.dropout(jnp.ones(3), 1.0, rng=rng)
    with pytest.raises(LayerArgumentError, match="rate"):
        nn.dropout(jnp.ones(3), -0.1, rng=rng)

    class Net(nn.Module):
        def apply(self, x):
            return nn.dropout(x, 0.5)

    _, params = Net.init(rng, jnp.ones(3))
    with pytest.raises(MissingRngError, match="Net"):
        Net.call(params, jnp.ones(3))
