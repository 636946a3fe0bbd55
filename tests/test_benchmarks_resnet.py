"""The ResNet benchmark's implementations compute the same model: a small ResNet (one
bottleneck block per stage, 32x32 images) in every library has the plain-JAX model's
output shape and exactly its number of parameters, with the same shape multiset (all
from ``jax.eval_shape``: no FLOPs, so the test stays fast).
Equal counts across six independent implementations catch a missing projection, a
conv with a bias, or a wrong width."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import resnet_models as rm
from benchmarks import resnet_peers as rp

STAGES = (1, 1, 1, 1)
BATCH, IMAGE = 2, 32
KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module", autouse=True)
def _default_promotion():
    """JAX's default promotion rules, which the benchmark runs under: the peers broadcast
    by rank and mix int and float inside their layers (Haiku's moving averages); the
    suite's strict settings are for flaxen's own code."""
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        yield


def _x() -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(1), (BATCH, IMAGE, IMAGE, 3))


def _shapes(tree) -> collections.Counter:
    """Multiset of parameter shapes without their size-1 axes (Haiku keeps BatchNorm's
    scale as (1, 1, 1, C)); convolution kernels are (kh, kw, cin, cout) in all of them."""
    return collections.Counter(tuple(d for d in leaf.shape if d != 1)
                               for leaf in jax.tree.leaves(tree))


def _plain():
    params, stats = rm.plain_init(KEY, STAGES)
    logits, _ = rm.plain_apply(params, stats, _x(), STAGES)
    return logits, params


def _flaxen():
    out, params, _ = rm.flaxen_module(STAGES).init_with_state(KEY, _x())
    return out, params


def _linen():
    model = rm.linen_module(STAGES)
    variables = model.init(KEY, _x())
    out, _ = model.apply(variables, _x(), mutable=["batch_stats"])
    return out, variables["params"]


def _nnx():
    from flax import nnx

    model = rp.nnx_module(STAGES, KEY)
    return model(_x()), nnx.state(model, nnx.Param)


def _equinox():
    import equinox as eqx

    model, state = rp.equinox_module(STAGES, KEY)
    out, _ = rp.equinox_apply(model, state, jnp.transpose(_x(), (0, 3, 1, 2)))
    # Equinox keeps kernels (cout, cin, kh, kw): put them in the (kh, kw, cin, cout) layout
    # of the others so the shape multisets compare.
    params = jax.tree.map(lambda a: jnp.transpose(a, (2, 3, 1, 0)) if a.ndim == 4 else a.T,
                          eqx.filter(model, eqx.is_inexact_array))
    return out, params


def _haiku():
    f = rp.haiku_module(STAGES)
    params, state = f.init(KEY, _x())
    out, _ = f.apply(params, state, _x())
    return out, params


PEERS = {"flaxen": _flaxen, "Flax Linen": _linen, "Flax NNX": _nnx, "Equinox": _equinox,
         "Haiku": _haiku}


@pytest.fixture(scope="module")
def plain():
    return jax.eval_shape(_plain)


@pytest.mark.parametrize("name", list(PEERS))
def test_same_output_shape_and_parameters_as_plain_jax(name, plain):
    pytest.importorskip({"Flax Linen": "flax", "Flax NNX": "flax", "Equinox": "equinox",
                         "Haiku": "haiku"}.get(name, "jax"))
    want_out, want_params = plain
    out, params = jax.eval_shape(PEERS[name])
    assert out.shape == want_out.shape == (BATCH, rm.CLASSES)
    assert out.dtype == want_out.dtype == jnp.float32
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    want = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(want_params))
    assert count == want, f"{name}: {count} parameters, plain JAX has {want}"
    assert _shapes(params) == _shapes(want_params)


def test_full_resnet50_has_the_published_parameter_count():
    """25,557,032 parameters: ResNet-50 v1.5 with 1000 classes (from shapes, no FLOPs)."""
    params, _ = jax.eval_shape(rm.plain_init, KEY)
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params)) == 25_557_032

