"""Benchmark 1: per-step overhead of a tiny MLP train step (32-32-32-10, relu, batch 8).

The model is so small that the step is dominated by what happens around the compiled
computation: flattening the arguments' pytrees, the jit cache lookup, dispatch. That is
exactly the cost a library adds on top of JAX. Input 32 features, two hidden layers of 32
with relu, 10 logits; momentum SGD (lr 0.1, beta 0.9); all float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import classifier
from benchmarks.common import add_bias, batch
from benchmarks.harness import Row, interleaved, rows_from_times

FEATURES = (32, 32, 10)
IN_FEATURES = 32
BATCH = 8


def plain_init(key: jax.Array) -> dict[str, Any]:
    params = {}
    fan_in = IN_FEATURES
    for i, (k, f) in enumerate(zip(jax.random.split(key, len(FEATURES)), FEATURES)):
        params[f"Dense_{i}"] = {
            "kernel": jax.random.normal(k, (fan_in, f)) / jnp.sqrt(float(fan_in)),
            "bias": jnp.zeros((f,)),
        }
        fan_in = f
    return params


def plain_apply(params: dict[str, Any], x: jax.Array) -> jax.Array:
    for i in range(len(FEATURES)):
        p = params[f"Dense_{i}"]
        x = add_bias(x @ p["kernel"], p["bias"])
        if i < len(FEATURES) - 1:
            x = jax.nn.relu(x)
    return x


def flaxen_model() -> Any:
    from benchmarks.common import require_attr
    from flaxen import nn

    dense = require_attr(nn, "Dense", "flaxen.nn.Dense")

    class MLP(nn.Module):
        def apply(self, x: jax.Array) -> jax.Array:
            for i, f in enumerate(FEATURES):
                x = dense(x, features=f)
                if i < len(FEATURES) - 1:
                    x = nn.relu(x)
            return x

    return MLP


def linen_model() -> Any:
    import flax.linen as ln

    class MLP(ln.Module):
        @ln.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            for i, f in enumerate(FEATURES):
                x = ln.Dense(f)(x)
                if i < len(FEATURES) - 1:
                    x = ln.relu(x)
            return x

    return MLP()


def nnx_model(rngs: Any) -> Any:
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            sizes = (IN_FEATURES, *FEATURES)
            self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs)
                                    for a, b in zip(sizes[:-1], sizes[1:])])

        def __call__(self, x: jax.Array) -> jax.Array:
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i < len(FEATURES) - 1:
                    x = nnx.relu(x)
            return x

    return MLP(rngs)


def equinox_model(key: jax.Array) -> tuple[Any, bool]:
    import equinox as eqx

    model = eqx.nn.MLP(IN_FEATURES, FEATURES[-1], width_size=FEATURES[0],
                       depth=len(FEATURES) - 1, activation=jax.nn.relu, key=key)
    return model, True


def haiku_model() -> Any:
    import haiku as hk

    return lambda x: hk.nets.MLP(list(FEATURES))(x)


MODELS = classifier.Models(plain_init, plain_apply, flaxen_model, linen_model, nnx_model,
                           equinox_model, haiku_model)


def run(quick: bool, peers: bool = True) -> list[Row]:
    """Step time of each library, interleaved; ratio against plain JAX."""
    key = jax.random.PRNGKey(0)
    x, y = batch(jax.random.PRNGKey(1), (BATCH, IN_FEATURES), FEATURES[-1])
    runs, skipped = classifier.setup_all(MODELS, key, x, y, peers)
    cpu: dict[str, list[float]] = {}
    times = interleaved(runs, repeats=3 if quick else 21, target_s=0.02 if quick else 0.3,
                        warmup=1, baseline=classifier.BASELINE, cpu=cpu)
    notes = {"flaxen (params dict)": "flaxen module, params dict through jit, same update "
             "as plain JAX (isolates the Optimizer/Model pytree cost)",
             "Flax NNX (split/merge)": "nnx.split/merge around jax.jit (NNX perf. guide)"}
    rows = rows_from_times("tiny MLP step", times, classifier.BASELINE, unit="us",
                           notes=notes)
    rows += rows_from_times("tiny MLP step", cpu, classifier.BASELINE, "CPU time/step", "us")
    rows += [Row("tiny MLP step", name, "step time", "us", None, note=note)
             for name, note in skipped.items()]
    return rows
