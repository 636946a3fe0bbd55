"""The pre-release decoding Cache (``nn.attention.Cache`` and ``cache=``).

Reference: the full causal pass of the same model. Decoding one token at a time must
give its logits (to float32 rounding: rtol 1e-5), eagerly, under jax.jit and inside a
lax.while_loop sampler, for a decoder-only LM and an encoder-decoder.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from flaxen import nn
from flaxen.errors import CacheError, LayerArgumentError, ShapeError

B, L, V, E = 2, 6, 11, 8
TOL = {"rtol": 1e-5, "atol": 1e-5}


class AddPositionEmbs(nn.Module):
    """Learned position embeddings, keeping their own decoding position in the cache,
    written as the pre-release lm1b example did (descriptor lambda, entry.i, uint32)."""

    def apply(self, inputs, max_len=16, cache=None):
        feat = inputs.shape[-1]
        pe = self.param("pos_embedding", (1, max_len, feat), nn.initializers.normal(0.5))
        if cache:
            if self.is_initializing():
                cache.store(lambda: (4, (1, 1)))
            else:
                entry = cache.retrieve(None)
                i = entry.i
                cache.store(entry.replace(i=entry.i + jnp.array(1, jnp.uint32)))
                return inputs + lax.dynamic_slice(pe, jnp.array((0, i, 0)), (1, 1, feat))
        return inputs + pe[:, :inputs.shape[1]]


class LM(nn.Module):
    def apply(self, ids, cache=None):
        x = nn.Embed(ids, num_embeddings=V, features=E)
        x = AddPositionEmbs(x, cache=cache)
        for _ in range(2):
            h = nn.LayerNorm(x)
            x = x + nn.SelfAttention(h, num_heads=2, causal_mask=True, cache=cache)
            x = x + nn.Dense(nn.relu(nn.Dense(x, 16)), E)
        return nn.Dense(x, V)


class EncDec(nn.Module):
    """WMT-shaped: encode/decode module methods; cross-attention via SelfAttention(inputs_kv=)."""

    def apply(self, src, tgt, cache=None):
        return self.decode(self.encode(src), tgt, cache=cache)

    @nn.module_method
    def encode(self, src, **unused):
        x = nn.Embed(src, num_embeddings=V, features=E, name="src_embed")
        return x + nn.SelfAttention(x, num_heads=2, name="encoder_attention")

    @nn.module_method
    def decode(self, encoded, tgt, cache=None, **unused):
        y = nn.Embed(tgt, num_embeddings=V, features=E, name="tgt_embed")
        y = AddPositionEmbs(y, cache=cache, name="posemb")
        y = y + nn.SelfAttention(y, num_heads=2, causal_mask=True, cache=cache, name="self")
        y = y + nn.SelfAttention(y, inputs_kv=encoded, num_heads=2, name="cross")
        return nn.Dense(y, V, name="logits")


def _ids(seed, length=L):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (B, length)), jnp.int32)


@pytest.fixture(scope="module")
def lm():
    with nn.attention.Cache().mutate() as cache_def:
        _, params = LM.init_by_shape(jax.random.PRNGKey(0), [((B, L), jnp.int32)],
                                     cache=cache_def)
    return params, cache_def


@jax.jit
def _lm_step(params, cache, tok):
    with cache.mutate() as new_cache:
        logits = LM.call(params, tok, cache=new_cache)
    return logits, new_cache


def test_cache_definition_holds_descriptors(lm):
    _, cache_def = lm
    assert sorted(cache_def.as_dict()) == ["/AddPositionEmbs_1", "/SelfAttention_3",
                                           "/SelfAttention_7"]
    cache = cache_def.initialize_cache((B, L))
    entry = cache["/SelfAttention_3"]
    assert isinstance(cache, nn.attention.Cache)
    assert entry.key.shape == entry.value.shape == (B, L, 2, E // 2)
    assert entry.i.dtype == jnp.uint32 and int(entry.i) == 0
    assert cache["/AddPositionEmbs_1"].key.shape == (B, L, 1, 1)


def test_lm_decodes_to_the_full_causal_logits_under_jit(lm):
    params, cache_def = lm
    ids = _ids(1)
    full = LM.call(params, ids)
    cache = cache_def.initialize_cache((B, L))
    steps = []
    for t in range(L):
        logits, cache = _lm_step(params, cache, ids[:, t:t + 1])
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, **TOL)
    assert int(cache["/SelfAttention_7"].i) == L and int(cache["/AddPositionEmbs_1"].i) == L
    # Eagerly (no jit), the first steps agree too.
    cache = cache_def.initialize_cache((B, L))
    with cache.mutate() as new_cache:
        first = LM.call(params, ids[:, :1], cache=new_cache)
    np.testing.assert_allclose(first, full[:, :1], **TOL)


def test_lm_greedy_sampler_in_a_while_loop(lm):
    params, cache_def = lm

    @jax.jit
    def sample(params, cache, first):
        def body(s):
            t, cache, tok, seq, logits_all = s
            with cache.mutate() as new_cache:
                logits = LM.call(params, tok, cache=new_cache)
            nxt = jnp.argmax(logits[:, 0], -1).astype(jnp.int32)[:, None]
            seq = lax.dynamic_update_slice(seq, nxt, (0, t + 1))
            logits_all = lax.dynamic_update_slice(logits_all, logits, (0, t, 0))
            return t + 1, new_cache, nxt, seq, logits_all

        seq = jnp.zeros((B, L + 1), jnp.int32).at[:, :1].set(first)
        init = (0, cache, first, seq, jnp.zeros((B, L, V)))
        return lax.while_loop(lambda s: s[0] < L, body, init)

    _, cache, _, seq, logits_all = sample(params, cache_def.initialize_cache((B, L)),
                                          _ids(2, 1))
    full = LM.call(params, seq[:, :L])
    np.testing.assert_allclose(logits_all, full, **TOL)
    np.testing.assert_array_equal(jnp.argmax(full, -1), seq[:, 1:])
    assert int(cache["/SelfAttention_3"].i) == L


def test_encoder_decoder_decodes_to_the_full_logits():
    ls = 5
    with nn.attention.Cache().mutate() as cache_def:
        _, params = EncDec.init_by_shape(jax.random.PRNGKey(1), [((B, ls), jnp.int32),
                                                                 ((B, L), jnp.int32)],
                                         cache=cache_def)
    assert sorted(cache_def.as_dict()) == ["/posemb", "/self"]
    model = nn.Model(EncDec, params)
    src, tgt = _ids(3, ls), _ids(4)
    full = model(src, tgt)

    @jax.jit
    def decode_all(model, src, tgt, cache):
        encoded = model.encode(src)

        def body(state):  # a while_loop, as the pre-release beam search threaded it
            t, cache, out = state
            tok = lax.dynamic_slice_in_dim(tgt, t, 1, axis=1)
            with cache.mutate() as new_cache:
                logits = model.decode(encoded, tok, cache=new_cache)
            return t + 1, new_cache, lax.dynamic_update_slice(out, logits, (0, t, 0))

        init = (0, cache, jnp.zeros((B, L, V)))
        return lax.while_loop(lambda s: s[0] < L, body, init)[2]

    got = decode_all(model, src, tgt, cache_def.initialize_cache((B, L)))
    np.testing.assert_allclose(got, full, **TOL)


def test_self_attention_with_inputs_kv_is_cross_attention(rng):
    x, y = jax.random.normal(rng, (2, 3, 4)), jax.random.normal(rng, (2, 5, 6))
    out, params = nn.SelfAttention.init(rng, x, inputs_kv=y, num_heads=2)
    ref = nn.MultiHeadDotProductAttention.call(params, x, y, num_heads=2)
    np.testing.assert_array_equal(out, ref)
    assert params["key"]["kernel"].shape == (6, 2, 2)
    # cache=None is the ordinary pass.
    np.testing.assert_array_equal(nn.SelfAttention.call(params, x, inputs_kv=y, num_heads=2,
                                                        cache=None), ref)


class Dec(nn.Module):
    def apply(self, x, cache=None, causal=True):
        return nn.SelfAttention(x, num_heads=2, causal_mask=causal, cache=cache)


@pytest.fixture(scope="module")
def dec():
    x = jnp.ones((B, 3, 4))
    with nn.attention.Cache().mutate() as cache_def:
        _, params = Dec.init(jax.random.PRNGKey(0), x, cache=cache_def)
    return params, cache_def


def test_cache_never_initialised(dec):
    params, cache_def = dec
    with cache_def.mutate() as c, pytest.raises(CacheError) as info:
        Dec.call(params, jnp.ones((B, 1, 4)), cache=c)
    msg = str(info.value)
    assert '"SelfAttention_0"' in msg and "never initialised" in msg
    assert "initialize_cache((batch, max_length))" in msg
    with nn.attention.Cache().mutate() as empty, pytest.raises(CacheError, match="no entry"):
        Dec.call(params, jnp.ones((B, 1, 4)), cache=empty)
    with pytest.raises(CacheError, match="empty Cache"):
        nn.attention.Cache().initialize_cache((B, 3))
    with pytest.raises(CacheError, match=r"SelfAttention_0.*\(batch, length\)"):
        cache_def.initialize_cache((B, 3, 3))


def test_decoding_past_the_cache_length(dec):
    params, cache_def = dec
    cache = cache_def.initialize_cache((B, 3))
    for _ in range(3):
        with cache.mutate() as cache:
            Dec.call(params, jnp.ones((B, 1, 4)), cache=cache)
    with cache.mutate() as c, pytest.raises(CacheError) as info:
        Dec.call(params, jnp.ones((B, 1, 4)), cache=c)
    msg = str(info.value)
    assert '"SelfAttention_0"' in msg and "at most 3 steps" in msg and "step 4" in msg
    # Under jit the index is traced: the output is NaN, never a plausible wrong value.

    @jax.jit
    def step(cache):
        with cache.mutate() as c:
            return Dec.call(params, jnp.ones((B, 1, 4)), cache=c)

    assert bool(jnp.all(jnp.isnan(step(cache))))
    assert not bool(jnp.any(jnp.isnan(step(cache_def.initialize_cache((B, 3))))))


def test_cache_misuse_errors(dec):
    params, cache_def = dec
    cache = cache_def.initialize_cache((B, 3))
    with pytest.raises(CacheError, match=r"SelfAttention_0.*cache.mutate\(\)"):
        Dec.call(params, jnp.ones((B, 1, 4)), cache=cache)  # not mutable
    with cache.mutate() as c, pytest.raises(ShapeError, match=r"one position per step"):
        Dec.call(params, jnp.ones((B, 2, 4)), cache=c)
    with cache.mutate() as c, pytest.raises(LayerArgumentError, match="causal_mask=True"):
        Dec.call(params, jnp.ones((B, 1, 4)), cache=c, causal=False)
    with pytest.raises(LayerArgumentError, match="nn.attention.Cache"):
        Dec.call(params, jnp.ones((B, 1, 4)), cache={"not": "a cache"})
