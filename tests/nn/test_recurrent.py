"""LSTM and GRU cells against the textbook equations; RNN (lax.scan) against a loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from flaxen import nn
from flaxen.errors import ShapeError


def _np(x):
    return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


def sig(x):
    return 1 / (1 + np.exp(-x))


def lstm_ref(p, c, h, x):
    p = jax.tree.map(_np, p)
    lin = lambda a, b: x @ p[a]["kernel"] + h @ p[b]["kernel"] + p[b]["bias"]
    i, f = sig(lin("ii", "hi")), sig(lin("if", "hf"))
    g, o = np.tanh(lin("ig", "hg")), sig(lin("io", "ho"))
    c2 = f * c + i * g
    return c2, o * np.tanh(c2)


def gru_ref(p, h, x):
    p = jax.tree.map(_np, p)
    r = sig(x @ p["ir"]["kernel"] + p["ir"]["bias"] + h @ p["hr"]["kernel"])
    z = sig(x @ p["iz"]["kernel"] + p["iz"]["bias"] + h @ p["hz"]["kernel"])
    n = np.tanh(x @ p["in"]["kernel"] + p["in"]["bias"]
                + r * (h @ p["hn"]["kernel"] + p["hn"]["bias"]))
    return (1 - z) * n + z * h


def _randomize(params, rng):
    leaves, tree = jax.tree.flatten(params)
    ks = jax.random.split(rng, len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) * 0.5
                                     for k, x in zip(ks, leaves)])


def test_lstm_cell_matches_textbook(rng):
    x = jax.random.normal(rng, (2, 3))
    carry = nn.LSTMCell.initialize_carry(rng, (2,), 4, nn.initializers.normal(1.0))
    assert carry[0].shape == (2, 4)
    _, params = nn.LSTMCell.init(rng, carry, x)
    assert params["ii"]["kernel"].shape == (3, 4) and "bias" not in params["ii"]
    assert params["hi"]["bias"].shape == (4,)
    params = _randomize(params, rng)
    (c, h), y = nn.LSTMCell.call(params, carry, x)
    c_ref, h_ref = lstm_ref(params, _np(carry[0]), _np(carry[1]), _np(x))
    np.testing.assert_allclose(np.asarray(c), c_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(h), h_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(h))


def test_gru_cell_matches_textbook(rng):
    x = jax.random.normal(rng, (2, 3))
    h0 = jax.random.normal(rng, (2, 4))
    _, params = nn.GRUCell.init(rng, h0, x)
    assert set(params["hr"]) == {"kernel"} and set(params["hn"]) == {"kernel", "bias"}
    params = _randomize(params, rng)
    h, _ = nn.GRUCell.call(params, h0, x)
    np.testing.assert_allclose(np.asarray(h), gru_ref(params, _np(h0), _np(x)), rtol=1e-5,
                               atol=1e-5)


def test_cell_grads(rng):
    x = jax.random.normal(rng, (1, 2))
    h0 = jnp.zeros((1, 2))
    _, params = nn.GRUCell.init(rng, h0, x)
    check_grads(jax.jit(lambda p, x: nn.GRUCell.call(p, h0, x)[0]), (params, x), order=1,
                modes=["rev"], atol=1e-2, rtol=1e-2)


class Seq(nn.Module):
    def apply(self, xs, cell, reverse=False):
        return nn.RNN(xs, cell=cell, hidden_size=3, reverse=reverse)


@pytest.mark.parametrize("cell,reverse", [(nn.LSTMCell, False), (nn.GRUCell, True)])
def test_rnn_scan_matches_loop(rng, cell, reverse):
    xs = jax.random.normal(rng, (2, 4, 5))
    (carry, ys), params = Seq.init(rng, xs, cell=cell, reverse=reverse)
    cell_params = params["RNN_0"]["cell"]
    assert ys.shape == (2, 4, 3)
    c = cell.initialize_carry(rng, (2,), 3)
    outs = [None] * 4
    steps = range(3, -1, -1) if reverse else range(4)
    for t in steps:
        c, outs[t] = cell.call(cell_params, c, xs[:, t])
    np.testing.assert_allclose(np.asarray(ys), np.stack(outs, 1), rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                         rtol=1e-5, atol=1e-5), carry, c)
    # Apply mode under jit gives the same.
    (_, ys2) = jax.jit(lambda p, x: Seq.call(p, x, cell=cell, reverse=reverse))(params, xs)
    np.testing.assert_allclose(np.asarray(ys2), np.asarray(ys), rtol=1e-6, atol=1e-6)


def test_rnn_init_by_shape_and_errors(rng):
    _, params = Seq.init_by_shape(rng, [((2, 4, 5), jnp.float32)], cell=nn.GRUCell)
    assert params["RNN_0"]["cell"]["ir"]["kernel"].shape == (5, 3)
    with pytest.raises(ShapeError, match=r"GRUCell.*\(2, 3\).*\(3, 5\)"):
        nn.GRUCell.init(rng, jnp.zeros((2, 3)), jnp.zeros((3, 5)))


def test_initialize_carry_calls_initializers_with_a_dtype():
    # jax.nn.initializers take (key, shape, dtype); one whose dtype is required must work.
    def ones_required_dtype(key, shape, dtype):
        del key
        return jnp.ones(shape, dtype)

    c, h = nn.LSTMCell.initialize_carry(jax.random.PRNGKey(0), (2,), 3, ones_required_dtype)
    np.testing.assert_array_equal(np.asarray(c), np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(np.asarray(h), np.ones((2, 3), np.float32))
    carry = nn.GRUCell.initialize_carry(jax.random.PRNGKey(0), (4,), 5, ones_required_dtype)
    assert carry.shape == (4, 5) and carry.dtype == jnp.float32
