"""Benchmark 2: throughput of the seed README's MNIST CNN train step, batch 128 (16 quick).

Conv(32, 3x3) relu avg_pool(2) Conv(64, 3x3) relu avg_pool(2) Dense(256) relu Dense(10)
log_softmax, on 28x28x1 float32 images (NHWC, SAME padding), momentum SGD. Here the
compiled computation dominates, so every library should be within noise of plain JAX.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from benchmarks import classifier
from benchmarks.common import add_bias, batch, require_attr
from benchmarks.harness import Row, interleaved, rows_from_times

BATCH = 128
QUICK_BATCH = 16  # --quick (CI): the same code paths at a small size
SHAPE = (28, 28, 1)
CONVS = (32, 64)
HIDDEN = 256
CLASSES = 10


def plain_init(key: jax.Array) -> dict[str, Any]:
    k = iter(jax.random.split(key, 4))
    params: dict[str, Any] = {}
    cin = SHAPE[-1]
    for i, cout in enumerate(CONVS):
        params[f"Conv_{i}"] = {
            "kernel": jax.random.normal(next(k), (3, 3, cin, cout)) / jnp.sqrt(9.0 * cin),
            "bias": jnp.zeros((cout,))}
        cin = cout
    flat = (SHAPE[0] // 4) * (SHAPE[1] // 4) * CONVS[-1]
    for i, (a, b) in enumerate(((flat, HIDDEN), (HIDDEN, CLASSES))):
        params[f"Dense_{i + 2}"] = {
            "kernel": jax.random.normal(next(k), (a, b)) / jnp.sqrt(float(a)),
            "bias": jnp.zeros((b,))}
    return params


def _avg_pool(x: jax.Array) -> jax.Array:
    return lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0


def plain_apply(params: dict[str, Any], x: jax.Array) -> jax.Array:
    for i in range(len(CONVS)):
        p = params[f"Conv_{i}"]
        x = lax.conv_general_dilated(x, p["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = add_bias(x, p["bias"])
        x = _avg_pool(jax.nn.relu(x))
    x = x.reshape((x.shape[0], -1))
    x = jax.nn.relu(add_bias(x @ params["Dense_2"]["kernel"], params["Dense_2"]["bias"]))
    x = add_bias(x @ params["Dense_3"]["kernel"], params["Dense_3"]["bias"])
    return jax.nn.log_softmax(x)


def flaxen_model() -> Any:
    from flaxen import nn

    conv = require_attr(nn, "Conv", "flaxen.nn.Conv")
    dense = require_attr(nn, "Dense", "flaxen.nn.Dense")
    avg_pool = require_attr(nn, "avg_pool", "flaxen.nn.avg_pool")

    class CNN(nn.Module):
        """The seed README's CNN, verbatim."""

        def apply(self, x: jax.Array) -> jax.Array:
            x = conv(x, features=32, kernel_size=(3, 3))
            x = nn.relu(x)
            x = avg_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = conv(x, features=64, kernel_size=(3, 3))
            x = nn.relu(x)
            x = avg_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = x.reshape((x.shape[0], -1))
            x = dense(x, features=256)
            x = nn.relu(x)
            x = dense(x, features=10)
            return nn.log_softmax(x)

    return CNN


def linen_model() -> Any:
    import flax.linen as ln

    class CNN(ln.Module):
        @ln.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            for f in CONVS:
                x = ln.avg_pool(ln.relu(ln.Conv(f, (3, 3))(x)), (2, 2), strides=(2, 2))
            x = x.reshape((x.shape[0], -1))
            x = ln.relu(ln.Dense(HIDDEN)(x))
            return ln.log_softmax(ln.Dense(CLASSES)(x))

    return CNN()


def nnx_model(rngs: Any) -> Any:
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.conv1 = nnx.Conv(SHAPE[-1], CONVS[0], (3, 3), rngs=rngs)
            self.conv2 = nnx.Conv(CONVS[0], CONVS[1], (3, 3), rngs=rngs)
            flat = (SHAPE[0] // 4) * (SHAPE[1] // 4) * CONVS[-1]
            self.dense1 = nnx.Linear(flat, HIDDEN, rngs=rngs)
            self.dense2 = nnx.Linear(HIDDEN, CLASSES, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            for conv in (self.conv1, self.conv2):
                x = nnx.avg_pool(nnx.relu(conv(x)), (2, 2), strides=(2, 2))
            x = x.reshape((x.shape[0], -1))
            return nnx.log_softmax(self.dense2(nnx.relu(self.dense1(x))))

    return CNN(rngs)


def equinox_model(key: jax.Array) -> tuple[Any, bool]:
    import equinox as eqx

    class CNN(eqx.Module):
        convs: list
        dense1: eqx.nn.Linear
        dense2: eqx.nn.Linear

        def __init__(self, key: jax.Array):
            k1, k2, k3, k4 = jax.random.split(key, 4)
            self.convs = [eqx.nn.Conv2d(SHAPE[-1], CONVS[0], 3, padding="SAME", key=k1),
                          eqx.nn.Conv2d(CONVS[0], CONVS[1], 3, padding="SAME", key=k2)]
            flat = (SHAPE[0] // 4) * (SHAPE[1] // 4) * CONVS[-1]
            self.dense1 = eqx.nn.Linear(flat, HIDDEN, key=k3)
            self.dense2 = eqx.nn.Linear(HIDDEN, CLASSES, key=k4)

        def __call__(self, x: jax.Array) -> jax.Array:  # one HWC image
            x = jnp.transpose(x, (2, 0, 1))
            pool = eqx.nn.AvgPool2d(2, 2)
            for conv in self.convs:
                x = pool(jax.nn.relu(conv(x)))
            x = jnp.transpose(x, (1, 2, 0)).reshape(-1)
            return jax.nn.log_softmax(self.dense2(jax.nn.relu(self.dense1(x))))

    return CNN(key), True


def haiku_model() -> Any:
    import haiku as hk

    def net(x: jax.Array) -> jax.Array:
        for f in CONVS:
            x = jax.nn.relu(hk.Conv2D(f, 3)(x))
            x = hk.avg_pool(x, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        x = hk.Flatten()(x)
        x = jax.nn.relu(hk.Linear(HIDDEN)(x))
        return jax.nn.log_softmax(hk.Linear(CLASSES)(x))

    return net


MODELS = classifier.Models(plain_init, plain_apply, flaxen_model, linen_model, nnx_model,
                           equinox_model, haiku_model)


def run(quick: bool, peers: bool = True) -> list[Row]:
    """Images per second of each library's train step, interleaved."""
    key = jax.random.PRNGKey(0)
    size = QUICK_BATCH if quick else BATCH
    x, y = batch(jax.random.PRNGKey(1), (size, *SHAPE), CLASSES)
    runs, skipped = classifier.setup_all(MODELS, key, x, y, peers)
    cpu: dict[str, list[float]] = {}
    times = interleaved(runs, repeats=3 if quick else 15, target_s=0.05 if quick else 1.0,
                        warmup=1, baseline=classifier.BASELINE, cpu=cpu)
    rows = rows_from_times("MNIST CNN step", times, classifier.BASELINE, unit="ms",
                           throughput_items=size, throughput_unit="images/s")
    rows += rows_from_times("MNIST CNN step", cpu, classifier.BASELINE, "CPU time/step", "ms")
    rows += [Row("MNIST CNN step", name, "throughput", "images/s", None, note=note)
             for name, note in skipped.items()]
    return rows
