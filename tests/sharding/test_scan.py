"""nn.ScanLayers: stacked params, identical outputs to the per-layer stack, remat, decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from examples.lm1b import models
from flaxen import errors, nn
from tests.sharding.lm import config, tiny_lm_params


def _module(num_layers, scan, remat=False):
    return models.TransformerLM.partial(config=config(num_layers, scan, remat))


def test_params_are_stacked_under_readable_paths():
    params = tiny_lm_params(num_layers=3, scan=True)
    assert "block_0" not in params
    blocks = params["blocks"]
    assert blocks["attention"]["query"]["kernel"].shape == (3, 64, 8, 8)
    assert blocks["ln_mlp"]["scale"].shape == (3, 64)
    assert params["embed"]["embedding"].shape == (64, 64)
    # Each layer has its own initial values.
    k = blocks["mlp"]["Dense_0"]["kernel"]
    assert not np.allclose(k[0], k[1])


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_equals_per_layer_stack_given_converted_params(remat):
    per_layer = tiny_lm_params(num_layers=3)
    stacked = models.stack_blocks(per_layer)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, 64)
    want = jax.jit(_module(3, False).call)(per_layer, tokens)
    got = jax.jit(_module(3, True, remat).call)(stacked, tokens)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    def loss(module, p):
        return jnp.mean(module.call(p, tokens) ** 2)

    g_want = jax.jit(jax.grad(lambda p: loss(_module(3, False), p)))(per_layer)
    g_got = jax.jit(jax.grad(lambda p: loss(_module(3, True, remat), p)))(stacked)
    for a, b in zip(jax.tree.leaves(models.stack_blocks(g_want)), jax.tree.leaves(g_got)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_converters_round_trip():
    stacked = tiny_lm_params(num_layers=2, scan=True)
    back = models.stack_blocks(models.unstack_blocks(stacked))
    assert jax.tree.structure(back) == jax.tree.structure(stacked)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(stacked)):
        np.testing.assert_array_equal(a, b)
    per_layer = models.unstack_blocks(stacked)
    assert sorted(k for k in per_layer if k.startswith("block_")) == ["block_0", "block_1"]


def test_decoding_with_scanned_params_matches_the_full_pass():
    cfg = config(2, scan=True)
    params = tiny_lm_params(num_layers=2, scan=True)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 5), 0, 64)
    full = models.TransformerLM.call(params, tokens, config=cfg)
    cache = models.init_cache(params, cfg, batch_size=2)
    for t in range(5):
        logits, cache = models.decode_step(params, cfg, cache, tokens[:, t:t + 1],
                                           jnp.int32(t))
        np.testing.assert_allclose(logits, full[:, t], rtol=1e-4, atol=1e-5)


def test_dropout_draws_a_different_key_per_layer():
    class Noise(nn.Module):
        def apply(self, x):
            return x + nn.dropout(jnp.ones_like(x), 0.5, deterministic=False)

    class Net(nn.Module):
        def apply(self, x):
            return nn.ScanLayers(x, block=Noise, num_layers=2, loop=True, name="s")

    class Traced(nn.Module):
        def apply(self, x):
            return nn.ScanLayers(x, block=Noise, num_layers=2, name="s")

    x = jnp.zeros((64,))
    _, params = Net.init(jax.random.PRNGKey(0), x)
    key = jax.random.PRNGKey(3)
    y = Traced.call(params, x, _rng=key)
    # Two different masks: sums of two draws of {0, 2} take the value 2 somewhere.
    assert np.any(np.asarray(y) == 2.0)
    np.testing.assert_array_equal(Net.call(params, x, _rng=key), y)


def test_wrong_num_layers_is_a_clear_error():
    params = tiny_lm_params(num_layers=2, scan=True)
    with pytest.raises(errors.LayerArgumentError, match="num_layers=3"):
        _module(3, True).call(params, jnp.zeros((1, 16), jnp.int32))


def test_stack_layers_refuses_gaps_and_different_shapes():
    with pytest.raises(errors.LayerArgumentError, match="consecutive layers from 0"):
        nn.stack_layers({"block_0": {"w": jnp.ones(2)}, "block_2": {"w": jnp.ones(2)}},
                        "block_", "blocks")
    with pytest.raises(errors.LayerArgumentError, match="layer block_1"):
        nn.stack_layers({"block_0": {"w": jnp.ones(2)}, "block_1": {"w": jnp.ones(3)}},
                        "block_", "blocks")


def test_remat_is_refused_without_scan():
    with pytest.raises(errors.FlaxenError, match="remat=True needs scan_layers=True"):
        config(2, scan=False, remat=True)


def test_remat_lowers_the_compiled_steps_temporary_memory():
    from tests.sharding.lm import train_step

    def temp_bytes(remat: bool) -> int:
        cfg = models.LMConfig(vocab_size=64, emb_dim=64, num_heads=8, num_layers=4,
                              mlp_dim=128, max_len=64, scan_layers=True, remat=remat)
        module = models.TransformerLM.partial(config=cfg)

        def create():
            from flaxen import optim

            _, params = module.init_by_shape(jax.random.PRNGKey(0), [((1, 64), jnp.int32)])
            return optim.Adam(1e-3).create(nn.Model(module, params))

        opt = jax.eval_shape(create)
        batch = jax.ShapeDtypeStruct((16, 65), jnp.int32)
        analysis = jax.jit(train_step).lower(opt, batch).compile().memory_analysis()
        return int(analysis.temp_size_in_bytes)

    plain, remat = temp_bytes(False), temp_bytes(True)
    assert remat < 0.8 * plain, (plain, remat)


def test_a_block_that_changes_the_carry_dtype_is_a_clear_error():
    block = nn.Dense.partial(features=4, dtype=jnp.bfloat16)
    with pytest.raises(errors.LayerArgumentError,
                       match=r"ScanLayers.*input's shape and dtype.*bfloat16"):
        nn.ScanLayers.init(jax.random.PRNGKey(0), jnp.ones((2, 4)), block=block, num_layers=2)
