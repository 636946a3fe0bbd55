"""ResNet-50 v1.5 train steps with BatchNorm state: plain JAX, flaxen, Flax Linen.

Flax NNX, Equinox and Haiku are in ``benchmarks/resnet_peers.py``. All of them have the
layout of ``examples/imagenet/models.py``: 7x7/2 stem (padding 3), BatchNorm (momentum
0.9, epsilon 1e-5, batch statistics in training), relu, 3x3/2 max-pool (padding 1),
bottleneck blocks (3, 4, 6, 3) with the stride on the 3x3 conv and
a projection shortcut where shapes change, global mean pool, Dense, log_softmax.
Convolutions have no bias. Each ``*_setup`` returns a ``Setup``: a train step
``step(*args)`` to trace/compile, its example arguments, ``init(key)`` that creates
parameters and state (to time under ``jax.jit``), and the library's own ``jit`` (``jax.jit``
unless its documentation recommends another: ``nnx.jit``, ``eqx.filter_jit``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from benchmarks.common import load_example, momentum_update, require, xent

STAGES = (3, 4, 6, 3)
EPS = 1e-5
MOMENTUM = 0.9
CLASSES = 1000


class Setup(NamedTuple):
    """One implementation's train step, its arguments, its init, and the jit to trace with.

    ``jit(fn)`` must return an object with ``.lower(*args)`` (``jax.jit``, ``nnx.jit``,
    ``eqx.filter_jit`` all do).
    """

    step: Callable[..., Any]
    args: tuple
    init: Callable[[jax.Array], Any]
    jit: Callable[[Callable[..., Any]], Any] = jax.jit


def blocks(stages: tuple[int, ...]) -> Iterator[tuple[str, int, int, bool]]:
    """(name, filters, stride, has projection) of every bottleneck block."""
    for i, size in enumerate(stages):
        for j in range(size):
            yield f"block_{i}_{j}", 64 * 2**i, 2 if i > 0 and j == 0 else 1, j == 0


def _conv_init(key: jax.Array, kh: int, cin: int, cout: int) -> jax.Array:
    std = jnp.sqrt(2.0 / (kh * kh * cout))
    return jax.random.normal(key, (kh, kh, cin, cout)) * std


def plain_init(key: jax.Array, stages: tuple[int, ...] = STAGES) -> tuple[dict, dict]:
    """``(params, batch_stats)`` as nested dicts of float32 arrays."""
    keys = iter(jax.random.split(key, 64))
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}

    def bn(name: str, c: int, p: dict, s: dict) -> None:
        p[name] = {"scale": jnp.ones((c,)), "bias": jnp.zeros((c,))}
        s[name] = {"mean": jnp.zeros((c,)), "var": jnp.ones((c,))}

    params["stem"] = {"conv": _conv_init(next(keys), 7, 3, 64)}
    stats["stem"] = {}
    bn("bn", 64, params["stem"], stats["stem"])
    cin = 64
    for name, f, _, proj in blocks(stages):
        p: dict[str, Any] = {}
        s: dict[str, Any] = {}
        for k, (kh, a, b) in enumerate(((1, cin, f), (3, f, f), (1, f, 4 * f))):
            p[f"conv{k + 1}"] = _conv_init(next(keys), kh, a, b)
            bn(f"bn{k + 1}", b, p, s)
        if proj:
            p["proj_conv"] = _conv_init(next(keys), 1, cin, 4 * f)
            bn("proj_bn", 4 * f, p, s)
        params[name], stats[name] = p, s
        cin = 4 * f
    params["head"] = {"kernel": jax.random.normal(next(keys), (cin, CLASSES)) / jnp.sqrt(
        float(cin)), "bias": jnp.zeros((CLASSES,))}
    return params, stats


def _conv(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    p = w.shape[0] // 2
    return lax.conv_general_dilated(x, w, (stride, stride), ((p, p), (p, p)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _bn(p: dict, s: dict, x: jax.Array) -> tuple[jax.Array, dict]:
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x), axis=(0, 1, 2)) - jnp.square(mean)
    mul = lax.rsqrt(var + EPS) * p["scale"]  # per channel, so only one full-size multiply
    y = x * mul + (p["bias"] - mean * mul)
    new = {"mean": MOMENTUM * s["mean"] + (1 - MOMENTUM) * mean,
           "var": MOMENTUM * s["var"] + (1 - MOMENTUM) * var}
    return y, new


def plain_apply(params: dict, stats: dict, x: jax.Array,
                stages: tuple[int, ...] = STAGES) -> tuple[jax.Array, dict]:
    """Training-mode forward: ``(log-probabilities [B, 1000], new batch_stats)``."""
    new: dict[str, Any] = {"stem": {}}
    x = _conv(x, params["stem"]["conv"], 2)
    x, new["stem"]["bn"] = _bn(params["stem"]["bn"], stats["stem"]["bn"], x)
    x = lax.reduce_window(jax.nn.relu(x), -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                          ((0, 0), (1, 1), (1, 1), (0, 0)))
    for name, _, stride, proj in blocks(stages):
        p, s, n = params[name], stats[name], {}
        y = x
        for k, st in enumerate((1, stride, 1)):
            y = _conv(y, p[f"conv{k + 1}"], st)
            y, n[f"bn{k + 1}"] = _bn(p[f"bn{k + 1}"], s[f"bn{k + 1}"], y)
            if k < 2:
                y = jax.nn.relu(y)
        if proj:
            x = _conv(x, p["proj_conv"], stride)
            x, n["proj_bn"] = _bn(p["proj_bn"], s["proj_bn"], x)
        x = jax.nn.relu(x + y)
        new[name] = n
    x = jnp.mean(x, axis=(1, 2))
    return jax.nn.log_softmax(x @ params["head"]["kernel"] + params["head"]["bias"]), new


def plain_setup(x: jax.Array, y: jax.Array, stages: tuple[int, ...]) -> Setup:
    init = functools.partial(plain_init, stages=stages)
    params, stats = jax.jit(init)(jax.random.PRNGKey(0))
    mom = jax.tree.map(jnp.zeros_like, params)

    def step(params, mom, stats, x, y):
        def loss(params):
            logits, new_stats = plain_apply(params, stats, x, stages)
            return xent(logits, y), new_stats
        grads, new_stats = jax.grad(loss, has_aux=True)(params)
        params, mom = momentum_update(params, mom, grads)
        return params, mom, new_stats

    return Setup(step, (params, mom, stats, x, y), init)


def flaxen_module(stages: tuple[int, ...] = STAGES) -> Any:
    """The ImageNet example's ResNet (``ResNet50`` for the default stages), 1000 classes."""
    return load_example("imagenet").ResNet.partial(num_classes=CLASSES, stage_sizes=stages,
                                          bottleneck=True)


def flaxen_setup(x: jax.Array, y: jax.Array, stages: tuple[int, ...]) -> Setup:
    from flaxen import nn, optim

    model_def = flaxen_module(stages)
    spec = [(x.shape, x.dtype)]
    with nn.stateful() as state:
        _, model = model_def.create_by_shape(jax.random.PRNGKey(0), spec)
    optimizer = optim.Momentum(learning_rate=0.1, beta=0.9).create(model)

    def step(optimizer, state, x, y):
        def loss(model):
            logits, new_state = model.call_with_state(state, x)
            return xent(logits, y), new_state
        grads, new_state = jax.grad(loss, has_aux=True)(optimizer.target)
        return optimizer.apply_gradient(grads), new_state

    def init(key):
        _, params, state = model_def.init_with_state(key, jnp.zeros(x.shape, x.dtype))
        return params, state

    return Setup(step, (optimizer, state, x, y), init)


def linen_module(stages: tuple[int, ...] = STAGES) -> Any:
    ln = require("flax.linen")

    class Bottleneck(ln.Module):
        filters: int
        stride: int
        proj: bool

        @ln.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            norm = lambda: ln.BatchNorm(use_running_average=False, momentum=MOMENTUM,
                                        epsilon=EPS)
            y = x
            for k, (kh, st) in enumerate(((1, 1), (3, self.stride), (1, 1))):
                f = self.filters * (4 if k == 2 else 1)
                p = kh // 2
                y = ln.Conv(f, (kh, kh), (st, st), padding=((p, p), (p, p)),
                            use_bias=False)(y)
                y = norm()(y)
                if k < 2:
                    y = ln.relu(y)
            if self.proj:
                x = ln.Conv(4 * self.filters, (1, 1), (self.stride, self.stride),
                            use_bias=False)(x)
                x = norm()(x)
            return ln.relu(x + y)

    class ResNet50(ln.Module):
        @ln.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            x = ln.Conv(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False)(x)
            x = ln.BatchNorm(use_running_average=False, momentum=MOMENTUM, epsilon=EPS)(x)
            x = ln.max_pool(ln.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            for _, f, stride, proj in blocks(stages):
                x = Bottleneck(f, stride, proj)(x)
            x = jnp.mean(x, axis=(1, 2))
            return ln.log_softmax(ln.Dense(CLASSES)(x))

    return ResNet50()


def linen_setup(x: jax.Array, y: jax.Array, stages: tuple[int, ...]) -> Setup:
    optax = require("optax")
    from flax.training import train_state

    model = linen_module(stages)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    state = train_state.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                          tx=optax.sgd(0.1, momentum=0.9))

    def step(state, batch_stats, x, y):
        def loss(params):
            logits, updates = state.apply_fn({"params": params, "batch_stats": batch_stats},
                                             x, mutable=["batch_stats"])
            return xent(logits, y), updates["batch_stats"]
        grads, new_stats = jax.grad(loss, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), new_stats

    def init(key):
        return model.init(key, jnp.zeros(x.shape, x.dtype))

    return Setup(step, (state, variables["batch_stats"], x, y), init)

