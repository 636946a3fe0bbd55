"""Pooling against a direct NumPy loop."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from flaxen import nn
from flaxen.errors import ShapeError


def pool_ref(x, window, strides, pads, op, fill):
    x = np.pad(x, [(0, 0)] + list(pads) + [(0, 0)], constant_values=fill)
    n = len(window)
    out_sp = [(x.shape[1 + i] - window[i]) // strides[i] + 1 for i in range(n)]
    out = np.zeros((x.shape[0], *out_sp, x.shape[-1]))
    for pos in itertools.product(*[range(o) for o in out_sp]):
        sl = tuple(slice(pos[i] * strides[i], pos[i] * strides[i] + window[i]) for i in range(n))
        out[(slice(None),) + pos] = op(x[(slice(None),) + sl], axis=tuple(range(1, n + 1)))
    return out


@pytest.mark.parametrize("window,strides,padding", [
    ((2, 2), (2, 2), "VALID"),
    ((3, 2), (1, 2), "VALID"),
    ((2, 2), (1, 1), ((1, 0), (0, 1))),
    ((3, 3), (2, 2), "SAME"),
])
def test_pools_match_loop(rng, window, strides, padding):
    x = jax.random.normal(rng, (2, 5, 4, 3))
    xn = np.asarray(x, np.float64)
    if padding == "VALID":
        pads = [(0, 0), (0, 0)]
    elif padding == "SAME":
        pads = jax.lax.padtype_to_pads((5, 4), window, strides, "SAME")
    else:
        pads = padding
    got_max = nn.max_pool(x, window, strides, padding)
    got_avg = nn.avg_pool(x, window, strides, padding)
    np.testing.assert_allclose(np.asarray(got_max),
                               pool_ref(xn, window, strides, pads, np.max, -np.inf), rtol=1e-6)
    ref_avg = pool_ref(xn, window, strides, pads, np.sum, 0.0) / np.prod(window)
    np.testing.assert_allclose(np.asarray(got_avg), ref_avg, rtol=1e-5, atol=1e-6)


def test_pool_1d_unbatched_and_dtypes(rng):
    x = jax.random.normal(rng, (6, 2)).astype(jnp.bfloat16)
    y = nn.avg_pool(x, (2,), (2,))
    assert y.shape == (3, 2) and y.dtype == jnp.bfloat16
    xi = jnp.arange(12, dtype=jnp.int32).reshape(1, 6, 2)
    np.testing.assert_array_equal(np.asarray(nn.max_pool(xi, (3,), (3,))),
                                  np.array([[[4, 5], [10, 11]]]))


def test_pool_grads(rng):
    x = jax.random.normal(rng, (1, 4, 4, 1))
    check_grads(jax.jit(lambda x: nn.avg_pool(x, (2, 2), (2, 2))), (x,), order=2, modes=["rev"])
    check_grads(jax.jit(lambda x: nn.max_pool(x, (2, 2), (1, 1))), (x,), order=1, modes=["rev"])


def test_pool_errors_name_module_and_shapes(rng):
    class Net(nn.Module):
        def apply(self, x):
            return nn.max_pool(x, window_shape=(5, 5))

    with pytest.raises(ShapeError, match=r"Net.*window \(5, 5\).*\(1, 4, 4, 1\)"):
        Net.init(rng, jnp.ones((1, 4, 4, 1)))
    with pytest.raises(ShapeError, match="rank 4"):
        nn.avg_pool(jnp.ones((4,)), (2, 2))
