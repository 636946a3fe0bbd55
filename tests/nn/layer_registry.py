"""One registry of every layer with an example input; drives test_layer_registry.py.

Each case is a Module class (plain functions are wrapped with ``nn.module``), example
inputs, keyword arguments, and a few flags about which cross-cutting checks apply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flaxen import nn


@dataclasses.dataclass(frozen=True)
class LayerCase:
    name: str
    module: Any
    make_inputs: Callable[[jax.Array], tuple]
    kwargs: dict = dataclasses.field(default_factory=dict)
    stateful: bool = False  # needs init_with_state / call_with_state (BatchNorm)
    stochastic: bool = False  # needs an rng at call time (dropout)
    bf16: str = "dtype"  # "dtype": pass dtype=bfloat16; "input": cast float inputs; "both"
    vmap: bool = True


def _seed(rng: jax.Array) -> int:
    return int(jax.random.key_data(rng).ravel()[-1])


def _normal(*shapes):
    """Inputs from NumPy (cheap: no per-shape compilation of JAX's random sampler)."""
    def make(rng):
        gen = np.random.default_rng(_seed(rng))
        return tuple(jnp.asarray(gen.standard_normal(s), jnp.float32) for s in shapes)
    return make


@nn.module
def AvgPool(x):  # noqa: N802 - a Module class made from a function
    return nn.avg_pool(x, window_shape=(2, 2), strides=(1, 1), padding="SAME")


@nn.module
def MaxPool(x):  # noqa: N802
    return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))


@nn.module
def SumPool(x):  # noqa: N802
    return nn.pool(x, 0.0, lax.add, window_shape=(3,), strides=(1,))


@nn.module
def Dropout(x):  # noqa: N802
    return nn.dropout(x, rate=0.5)


@nn.module
def DotProductAttention(q, k, v, dtype=jnp.float32):  # noqa: N802
    return nn.dot_product_attention(q, k, v, dtype=dtype)


CASES = [
    LayerCase("Dense", nn.Dense, _normal((2, 3)), {"features": 4}),
    LayerCase("DenseGeneral", nn.DenseGeneral, _normal((2, 3, 4)),
              {"features": (2, 3), "axis": (-2, -1)}),
    LayerCase("Conv", nn.Conv, _normal((1, 5, 5, 2)), {"features": 3, "kernel_size": (3, 3)}),
    LayerCase("Conv1DGrouped", nn.Conv, _normal((1, 6, 4)),
              {"features": 4, "kernel_size": (3,), "feature_group_count": 2}),
    LayerCase("ConvTranspose", nn.ConvTranspose, _normal((1, 3, 3, 2)),
              {"features": 3, "kernel_size": (2, 2), "strides": (2, 2)}),
    LayerCase("Embed", nn.Embed,
              lambda rng: (jnp.asarray(np.random.default_rng(_seed(rng)).integers(0, 5, (2, 3)),
                                       jnp.int32),),
              {"num_embeddings": 5, "features": 4}),
    LayerCase("BatchNorm", nn.BatchNorm, _normal((4, 3)), {}, stateful=True),
    LayerCase("LayerNorm", nn.LayerNorm, _normal((2, 3, 4))),
    LayerCase("RMSNorm", nn.RMSNorm, _normal((2, 3, 4))),
    LayerCase("GroupNorm", nn.GroupNorm, _normal((2, 3, 4)), {"num_groups": 2}),
    LayerCase("AvgPool", AvgPool, _normal((1, 4, 4, 2)), bf16="input"),
    LayerCase("MaxPool", MaxPool, _normal((1, 4, 4, 2)), bf16="input"),
    LayerCase("Pool", SumPool, _normal((1, 5, 2)), bf16="input"),
    LayerCase("Dropout", Dropout, _normal((2, 8)), stochastic=True, bf16="input"),
    LayerCase("DotProductAttention", DotProductAttention,
              _normal((2, 3, 2, 4), (2, 5, 2, 4), (2, 5, 2, 4))),
    LayerCase("MultiHeadDotProductAttention", nn.MultiHeadDotProductAttention,
              _normal((2, 3, 4), (2, 5, 6)), {"num_heads": 2}),
    LayerCase("SelfAttention", nn.SelfAttention, _normal((2, 3, 4)),
              {"num_heads": 2, "causal_mask": True}),
    LayerCase("LSTMCell", nn.LSTMCell,
              lambda rng: ((jnp.zeros((2, 4)), jnp.zeros((2, 4))),
                           _normal((2, 3))(rng)[0])),
    LayerCase("GRUCell", nn.GRUCell, _normal((2, 4), (2, 3))),
    LayerCase("RNN", nn.RNN, _normal((2, 4, 3)), {"hidden_size": 4, "cell": nn.LSTMCell}),
    LayerCase("ScanLayers", nn.ScanLayers, _normal((2, 4)),
              {"block": nn.Dense.partial(features=4), "num_layers": 3},
              bf16="both"),  # a scan's carry keeps its dtype: bfloat16 blocks and inputs
]
