"""Dense, DenseGeneral and Embed against NumPy einsum references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from flaxen import nn
from flaxen.errors import FlaxenError, LayerArgumentError, ShapeError

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 3e-2}


def _np(x):
    return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_matches_einsum(rng, dtype):
    x = jax.random.normal(rng, (2, 3, 4))
    y, params = nn.Dense.init(rng, x, features=5, dtype=dtype,
                              bias_init=nn.initializers.normal(1.0))
    assert y.dtype == dtype and y.shape == (2, 3, 5)
    assert params["kernel"].shape == (4, 5) and params["kernel"].dtype == jnp.float32
    ref = np.einsum("abi,io->abo", _np(x), _np(params["kernel"])) + _np(params["bias"])
    np.testing.assert_allclose(_np(y), ref, rtol=TOL[dtype], atol=TOL[dtype])


def test_dense_no_bias_and_param_dtype(rng):
    x = jnp.ones((2, 3))
    _, params = nn.Dense.init(rng, x, features=4, bias=False, param_dtype=jnp.bfloat16)
    assert set(params) == {"kernel"} and params["kernel"].dtype == jnp.bfloat16


def test_dense_grads(rng):
    x = jax.random.normal(rng, (2, 3))
    _, params = nn.Dense.init(rng, x, features=2)
    check_grads(jax.jit(lambda p, x: nn.Dense.call(p, x, features=2)), (params, x), order=2,
                modes=["rev"], atol=1e-2, rtol=1e-2)


def test_dense_wrong_feature_size_names_path_and_shapes(rng):
    _, params = nn.Dense.init(rng, jnp.ones((2, 3)), features=4)
    with pytest.raises(ShapeError, match=r"Dense.*\(3, 4\).*\(2, 5\).*\(5, 4\)"):
        nn.Dense.call(params, jnp.ones((2, 5)), features=4)


def test_dense_rank0_is_an_error(rng):
    with pytest.raises(ShapeError, match="rank >= 1"):
        nn.Dense.init(rng, jnp.float32(1.0), features=4)


def test_dense_general_matches_einsum(rng):
    x = jax.random.normal(rng, (3, 2, 4, 5))
    y, params = nn.DenseGeneral.init(rng, x, features=(6, 7), axis=(-2, -1), batch_dims=0,
                                     bias_init=nn.initializers.normal(1.0))
    assert params["kernel"].shape == (3, 4, 5, 6, 7)
    assert params["bias"].shape == (3, 6, 7)
    ref = np.einsum("bxij,bijfg->bxfg", _np(x), _np(params["kernel"]))
    ref = ref + _np(params["bias"])[:, None]
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


def test_dense_general_init_is_dense_like(rng):
    # Each batch slice is a Dense kernel of the flattened shape: variance 1/fan_in.
    x = jnp.ones((2, 8, 16))
    _, params = nn.DenseGeneral.init(rng, x, features=(4, 32), axis=(1, 2), batch_dims=0)
    k = np.asarray(params["kernel"]).reshape(2, 128, 128)
    assert abs(k.var() - 1.0 / 128) < 0.2 / 128


def test_dense_general_bad_batch_dims(rng):
    with pytest.raises(LayerArgumentError, match="consecutive leading"):
        nn.DenseGeneral.init(rng, jnp.ones((2, 3, 4)), features=2, batch_dims=1)
    with pytest.raises(ShapeError, match="axis 5"):
        nn.DenseGeneral.init(rng, jnp.ones((2, 3)), features=2, axis=5)


def test_embed_lookup_and_attend(rng):
    ids = jnp.array([[0, 3, 2], [1, 1, 4]], jnp.int32)
    y, params = nn.Embed.init(rng, ids, num_embeddings=5, features=3)
    emb = _np(params["embedding"])
    assert emb.shape == (5, 3)
    np.testing.assert_allclose(np.asarray(y), emb[np.asarray(ids)], rtol=1e-6)
    q = jax.random.normal(rng, (2, 3))
    logits = nn.Embed.attend.call(params, q, num_embeddings=5, features=3)
    np.testing.assert_allclose(np.asarray(logits), _np(q) @ emb.T, rtol=1e-5, atol=1e-5)


def test_embed_tied_in_a_model(rng):
    class LM(nn.Module):
        def apply(self, ids):
            embed = nn.Embed.shared(num_embeddings=7, features=4, name="embed")
            h = embed(ids)
            return embed.attend(h)

    ids = jnp.array([[1, 2]], jnp.int32)
    logits, params = LM.init(rng, ids)
    assert logits.shape == (1, 2, 7)
    assert jax.tree.map(jnp.shape, params) == {"embed": {"embedding": (7, 4)}}
    np.testing.assert_allclose(np.asarray(LM.call(params, ids)), np.asarray(logits))


def test_embed_out_of_range_ids_give_nan(rng):
    ids = jnp.array([0, 9], jnp.int32)
    y, _ = nn.Embed.init(rng, ids, num_embeddings=3, features=2)
    assert np.isfinite(np.asarray(y[0])).all() and np.isnan(np.asarray(y[1])).all()


def test_embed_rejects_float_ids(rng):
    with pytest.raises(LayerArgumentError, match="integer"):
        nn.Embed.init(rng, jnp.ones((2,)), num_embeddings=3, features=2)
    assert issubclass(LayerArgumentError, FlaxenError)
