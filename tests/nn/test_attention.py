"""Attention against a naive NumPy softmax; masks; the decoding cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from flaxen import nn
from flaxen.errors import LayerArgumentError, MissingStateError, ShapeError


def _np(x):
    return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


def naive_attention(q, k, v, bias=None):
    """q (B, Lq, H, D), k (B, Lk, H, D), v (B, Lk, H, Dv), bias (B|1, H|1, Lq, Lk)."""
    b, lq, h, d = q.shape
    out = np.zeros((b, lq, h, v.shape[-1]))
    for bi in range(b):
        for hi in range(h):
            logits = q[bi, :, hi] @ k[bi, :, hi].T / np.sqrt(d)
            if bias is not None:
                logits = logits + bias[min(bi, bias.shape[0] - 1), min(hi, bias.shape[1] - 1)]
            w = np.exp(logits - logits.max(-1, keepdims=True))
            w = w / w.sum(-1, keepdims=True)
            out[bi, :, hi] = w @ v[bi, :, hi]
    return out


def _randn(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _qkv(rng, b=2, lq=3, lk=4, h=2, d=3, dv=5):
    del rng
    return _randn(b, lq, h, d, seed=1), _randn(b, lk, h, d, seed=2), _randn(b, lk, h, dv, seed=3)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 5e-2)])
def test_dot_product_attention_matches_naive(rng, dtype, tol):
    q, k, v = _qkv(rng, dv=3)  # depth == v_depth, so "jax_nn" really uses jax.nn
    bias = _randn(2, 1, 3, 4)
    ref = naive_attention(_np(q), _np(k), _np(v), _np(bias))
    for impl in (None, "jax_nn", "einsum"):
        y = nn.dot_product_attention(q, k, v, dtype=dtype, bias=bias, implementation=impl)
        if impl == "jax_nn":  # under vmap too (bf16 once failed there, strict promotion)
            f = lambda q, k, v: nn.dot_product_attention(q, k, v, dtype=dtype, bias=bias,
                                                         implementation="jax_nn")
            y = jax.vmap(f)(q[None], k[None], v[None])[0]
        assert y.dtype == dtype
        np.testing.assert_allclose(_np(y), ref, rtol=tol, atol=tol, err_msg=str(impl))
    with pytest.raises(LayerArgumentError, match="implementation"):
        nn.dot_product_attention(q, k, v, implementation="flash")


def test_boolean_mask_equals_additive_bias(rng):
    q, k, v = _qkv(rng, dv=3)
    mask = np.random.default_rng(0).random((2, 2, 3, 4)) < 0.7
    mask[..., 0] = True
    mask = jnp.asarray(mask)
    a = nn.dot_product_attention(q, k, v, mask=mask, implementation="jax_nn")
    b = nn.dot_product_attention(q, k, v, bias=mask)  # bool bias is a mask
    ref = naive_attention(_np(q), _np(k), _np(v), np.where(np.asarray(mask), 0.0, -1e10))
    np.testing.assert_allclose(np.asarray(a), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(b), ref, rtol=1e-5, atol=1e-5)


def test_two_axis_attention_matches_flattened(rng):
    # Attention over a 2x3 grid equals 1-D attention over the 6 flattened positions.
    q, k, v = (_randn(1, 2, 3, 2, 4, seed=i) for i in range(3))
    y = nn.dot_product_attention(q, k, v)
    flat = lambda a: _np(a).reshape(1, 6, 2, 4)
    ref = naive_attention(flat(q), flat(k), flat(v)).reshape(1, 2, 3, 2, 4)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)
    # Axis 1 only: axis 2 behaves like batch.
    y1 = nn.dot_product_attention(q, k, v, axis=(1,))
    for j in range(3):
        r = naive_attention(_np(q[:, :, j]), _np(k[:, :, j]), _np(v[:, :, j]))
        np.testing.assert_allclose(np.asarray(y1[:, :, j]), r, rtol=1e-5, atol=1e-5)


def test_attention_dropout_broadcast(rng):
    q, k, v = _qkv(rng, b=2, lq=4, lk=4)
    y = nn.dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=rng)
    y0 = nn.dot_product_attention(q, k, v, dropout_rate=0.5, deterministic=True)
    assert y.shape == y0.shape and not np.allclose(np.asarray(y), np.asarray(y0))


def test_attention_grads(rng):
    q, k, v = _qkv(rng, b=1, lq=2, lk=2, h=1, d=2, dv=2)
    check_grads(jax.jit(lambda q, k, v: nn.dot_product_attention(q, k, v)), (q, k, v), order=1,
                modes=["rev"], atol=1e-2, rtol=1e-2)


def test_attention_shape_errors(rng):
    q, k, v = _qkv(rng)
    with pytest.raises(ShapeError, match=r"mask shape \(2, 1, 4, 4\).*|logits shape"):
        nn.dot_product_attention(q, k, v, mask=jnp.ones((2, 1, 4, 4), bool))
    with pytest.raises(ShapeError, match=r"\(2, 2, 3, 4\).*mask shape \(2, 3, 4\)"):
        nn.dot_product_attention(q, k, v, mask=jnp.ones((2, 3, 4), bool))
    with pytest.raises(ShapeError, match="key and value"):
        nn.dot_product_attention(q, k, v[:, :3])


def test_masks():
    x = jnp.array([[1, 1, 0]])
    m = nn.make_attention_mask(x > 0, x > 0)
    assert m.shape == (1, 1, 3, 3) and m.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(m[0, 0]), [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    c = nn.make_causal_mask(x)
    np.testing.assert_array_equal(np.asarray(c[0, 0]), np.tril(np.ones((3, 3))))
    p = nn.make_padding_mask(x[..., None])
    assert p.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(p), np.asarray(m, np.float32))
    s = nn.make_padding_mask(jnp.array([[1, 1, 2]]), segmentation_mask=True)
    np.testing.assert_array_equal(np.asarray(s[0, 0]), [[1, 1, 0], [1, 1, 0], [0, 0, 1]])


def _mha_ref(params, xq, xkv, heads, bias=None):
    p = jax.tree.map(_np, params)
    proj = lambda x, n: np.einsum("blf,fhd->blhd", _np(x), p[n]["kernel"]) + p[n]["bias"]
    o = naive_attention(proj(xq, "query"), proj(xkv, "key"), proj(xkv, "value"), bias)
    return np.einsum("blhd,hdf->blf", o, p["out"]["kernel"]) + p["out"]["bias"]


def _randomize(params, rng):
    leaves, tree = jax.tree.flatten(params)
    return jax.tree.unflatten(tree, [_randn(*x.shape, seed=i) * 0.5
                                     for i, x in enumerate(leaves)])


def test_multi_head_attention_matches_reference(rng):
    xq, xkv = _randn(2, 3, 4, seed=4), _randn(2, 5, 6, seed=5)
    _, params = nn.MultiHeadDotProductAttention.init_by_shape(
        rng, [xq.shape, xkv.shape], num_heads=2, qkv_features=8, out_features=3)
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {"query": {"kernel": (4, 2, 4), "bias": (2, 4)},
                      "key": {"kernel": (6, 2, 4), "bias": (2, 4)},
                      "value": {"kernel": (6, 2, 4), "bias": (2, 4)},
                      "out": {"kernel": (2, 4, 3), "bias": (3,)}}
    params = _randomize(params, rng)
    y = jax.jit(lambda p: nn.MultiHeadDotProductAttention.call(
        p, xq, xkv, num_heads=2, qkv_features=8, out_features=3))(params)
    np.testing.assert_allclose(np.asarray(y), _mha_ref(params, xq, xkv, 2), rtol=1e-4,
                               atol=1e-4)


def test_self_attention_masks(rng):
    x = _randn(2, 4, 4, seed=6)
    pad = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]], jnp.bool_)
    _, params = nn.SelfAttention.init_by_shape(rng, [x.shape], num_heads=2)
    params = _randomize(params, rng)
    y = jax.jit(lambda p: nn.SelfAttention.call(p, x, num_heads=2, causal_mask=True,
                                                padding_mask=pad))(params)
    allowed = np.tril(np.ones((4, 4), bool))[None] & np.asarray(pad)[:, :, None] & \
        np.asarray(pad)[:, None, :]
    bias = np.where(allowed, 0.0, -1e10)[:, None]
    ref = _mha_ref(params, x, x, 2, bias)
    valid = np.asarray(pad)
    np.testing.assert_allclose(np.asarray(y)[valid], ref[valid], rtol=1e-4, atol=1e-4)


def test_mask_of_wrong_shape_names_path(rng):
    class Net(nn.Module):
        def apply(self, x, pad):
            return nn.SelfAttention(x, num_heads=1, padding_mask=pad)

    x = jnp.ones((2, 4, 2))
    with pytest.raises(ShapeError, match=r'"SelfAttention_0".*\(2, 4\).*\(2, 5\)'):
        Net.init(rng, x, jnp.ones((2, 5), bool))
    with pytest.raises(LayerArgumentError, match="qkv_features"):
        nn.SelfAttention.init(rng, x, num_heads=3)


class Decoder(nn.Module):
    def apply(self, x, decode=False):
        h = nn.Dense(x, features=4)
        h = nn.SelfAttention(h, num_heads=2, causal_mask=True, decode=decode)
        return nn.SelfAttention(h, num_heads=2, causal_mask=True, decode=decode)


_init_decoder = jax.jit(lambda rng, x: Decoder.init(rng, x))
_allocate = jax.jit(lambda p, x: Decoder.call_with_state(p, None, x, decode=True))
_step = jax.jit(lambda p, c, xt: Decoder.call_with_state(p, c, xt, decode=True))


def test_decoding_with_cache_equals_full_causal_pass(rng):
    x = _randn(2, 5, 3, seed=7)
    full, params = _init_decoder(rng, x)
    _, cache = _allocate(params, jnp.zeros_like(x))
    assert cache["/SelfAttention_1"]["cached_key"].shape == (2, 5, 2, 2)
    cache0 = cache
    outs = []
    for t in range(5):
        y_t, cache = _step(params, cache, x[:, t:t + 1])
        outs.append(y_t)
    np.testing.assert_allclose(np.concatenate(outs, 1), np.asarray(full), rtol=1e-5,
                               atol=1e-5)
    assert int(cache["/SelfAttention_2"]["cache_index"]) == 5

    # The cache is an ordinary pytree: it can be the carry of a scan (or a while_loop).
    def body(cache, xt):
        y, cache = Decoder.call_with_state(params, cache, xt[:, None], decode=True)
        return cache, y[:, 0]

    _, ys = jax.jit(lambda c, xs: jax.lax.scan(body, c, xs))(cache0, jnp.swapaxes(x, 0, 1))
    np.testing.assert_allclose(np.asarray(jnp.swapaxes(ys, 0, 1)), np.asarray(full),
                               rtol=1e-5, atol=1e-5)


def test_decoding_errors(rng):
    x = _randn(2, 5, 3, seed=7)
    _, params = _init_decoder(rng, x)
    with pytest.raises(MissingStateError, match='"SelfAttention_1"'):
        Decoder.call(params, x, decode=True)
    _, cache = _allocate(params, x)
    with pytest.raises(ShapeError, match=r'"SelfAttention_1".*one position'):
        Decoder.call_with_state(params, cache, x[:, :2], decode=True)


@pytest.mark.parametrize("kwargs,arg,value", [
    ({"num_heads": 0}, "num_heads", "0"),
    ({"num_heads": -2}, "num_heads", "-2"),
    ({"num_heads": 2.5}, "num_heads", "2.5"),
    ({"num_heads": True}, "num_heads", "True"),
    ({"num_heads": 2, "qkv_features": 0}, "qkv_features", "0"),
    ({"num_heads": 2, "out_features": -1}, "out_features", "-1"),
    ({"num_heads": 2, "attention_axis": 5}, "attention_axis", "5"),
    ({"num_heads": 2, "attention_axis": 2}, "attention_axis", "2"),
    ({"num_heads": 2, "dropout_rate": 1.5}, "dropout_rate", "1.5"),
    ({"num_heads": 3}, "qkv_features", "4"),
])
def test_bad_attention_arguments_name_path_argument_value_and_allowed(rng, kwargs, arg, value):
    class Net(nn.Module):
        def apply(self, x):
            return nn.SelfAttention(x, **kwargs)

    with pytest.raises(LayerArgumentError) as info:
        Net.init(rng, jnp.ones((2, 3, 4)))
    msg = str(info.value)
    assert '"SelfAttention_0"' in msg and arg in msg and f"got {value}" in msg
    assert "expected" in msg


def test_self_attention_needs_num_heads(rng):
    with pytest.raises(LayerArgumentError, match=r"num_heads.*positive int.*missing"):
        nn.SelfAttention.init(rng, jnp.ones((2, 3, 4)))


def test_feature_mismatch_blames_the_stored_kernel(rng):
    _, params = nn.SelfAttention.init(rng, jnp.ones((2, 3, 8)), num_heads=8)
    with pytest.raises(ShapeError) as info:
        nn.SelfAttention.call(params, jnp.ones((2, 3, 9)), num_heads=8)
    msg = str(info.value)
    assert "SelfAttention" in msg and "stored query/kernel of shape (8, 8, 1)" in msg
    assert "inputs_q with 8 features" in msg and "(2, 3, 9)" in msg
    assert "qkv_features" not in msg
    with pytest.raises(ShapeError, match=r"num_heads=8, got num_heads=4"):
        nn.SelfAttention.call(params, jnp.ones((2, 3, 8)), num_heads=4)


def test_decode_true_past_the_end(rng):
    from flaxen.errors import CacheError

    x = _randn(2, 2, 3, seed=7)
    _, params = _init_decoder(rng, x)
    _, cache = _allocate(params, jnp.zeros_like(x))
    for t in range(2):
        _, cache = Decoder.call_with_state(params, cache, x[:, t:t + 1], decode=True)
    with pytest.raises(CacheError, match=r'"SelfAttention_1".*at most 2 steps.*step 3'):
        Decoder.call_with_state(params, cache, x[:, :1], decode=True)
    y, _ = _step(params, cache, x[:, :1])  # under jit: NaN, not an overwritten slot
    assert bool(jnp.all(jnp.isnan(y)))
