"""The ResNet-50 of ``resnet_models.py`` in Flax NNX, Equinox and Haiku.

Same architecture as the plain-JAX model: 7x7/2 stem (padding 3), BatchNorm (momentum
0.9, epsilon 1e-5, batch statistics in training), relu, 3x3/2 max-pool (padding 1),
bottleneck blocks with the stride on the 3x3 conv and a projection shortcut where shapes
change, global mean pool, Dense with bias, log_softmax; convolutions have no bias. Each
is trained the way its library's documentation shows, with optax's momentum SGD (lr 0.1,
beta 0.9, the same update as the others):

- Flax NNX: ``nnx.Conv``/``nnx.BatchNorm`` modules, ``nnx.Optimizer(..., wrt=nnx.Param)``
  stepped in place under ``nnx.jit`` with ``nnx.value_and_grad``; and the functional
  route (``nnx.split`` once, ``nnx.merge`` inside ``jax.jit``, return ``nnx.state``).
- Equinox: ``eqx.nn.Conv2d``/``eqx.nn.BatchNorm(mode="batch")`` on one example in
  channels-first layout, vmapped over the batch with ``axis_name="batch"``, state in an
  ``eqx.nn.State`` from ``eqx.nn.make_with_state``, ``eqx.filter_grad`` and
  ``eqx.filter_jit``. The input is given channels-first (NCHW), as Equinox expects.
- Haiku: ``hk.Conv2D``/``hk.BatchNorm`` in ``hk.transform_with_state``, ``jax.jit``.

Each ``*_setup(x, y, stages)`` returns a ``resnet_models.Setup``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.common import BETA, LEARNING_RATE, require, xent
from benchmarks.resnet_models import CLASSES, EPS, MOMENTUM, Setup, blocks


def _sgd() -> Any:
    return require("optax").sgd(LEARNING_RATE, momentum=BETA)


# ---------------------------------------------------------------- Flax NNX


@functools.cache
def _nnx_resnet() -> type:
    """The NNX ResNet class (built once: NNX caches compiled steps by module type)."""
    nnx = require("flax.nnx")

    def conv(cin: int, cout: int, k: int, stride: int, rngs: Any) -> Any:
        p = k // 2
        return nnx.Conv(cin, cout, (k, k), (stride, stride), padding=((p, p), (p, p)),
                        use_bias=False, rngs=rngs)

    def norm(c: int, rngs: Any) -> Any:
        return nnx.BatchNorm(c, momentum=MOMENTUM, epsilon=EPS, rngs=rngs)

    class Bottleneck(nnx.Module):
        def __init__(self, cin: int, f: int, stride: int, proj: bool, rngs: Any):
            self.convs = nnx.List([conv(cin, f, 1, 1, rngs), conv(f, f, 3, stride, rngs),
                                   conv(f, 4 * f, 1, 1, rngs)])
            self.norms = nnx.List([norm(f, rngs), norm(f, rngs), norm(4 * f, rngs)])
            self.proj = (nnx.Sequential(conv(cin, 4 * f, 1, stride, rngs),
                                        norm(4 * f, rngs)) if proj else None)

        def __call__(self, x: jax.Array) -> jax.Array:
            y = x
            for k, (c, n) in enumerate(zip(self.convs, self.norms)):
                y = n(c(y))
                if k < 2:
                    y = nnx.relu(y)
            if self.proj is not None:
                x = self.proj(x)
            return nnx.relu(x + y)

    class ResNet(nnx.Module):
        def __init__(self, stages: tuple[int, ...], rngs: Any):
            self.conv = conv(3, 64, 7, 2, rngs)
            self.norm = norm(64, rngs)
            layers, cin = [], 64
            for _, f, stride, proj in blocks(stages):
                layers.append(Bottleneck(cin, f, stride, proj, rngs))
                cin = 4 * f
            self.blocks = nnx.List(layers)
            self.head = nnx.Linear(cin, CLASSES, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            x = nnx.relu(self.norm(self.conv(x)))
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            for block in self.blocks:
                x = block(x)
            return jax.nn.log_softmax(self.head(jnp.mean(x, axis=(1, 2))))

    return ResNet


def nnx_module(stages: tuple[int, ...], key: jax.Array) -> Any:
    """The NNX ResNet (NHWC input), in training mode."""
    nnx = require("flax.nnx")
    return _nnx_resnet()(stages, nnx.Rngs(key))


def _nnx_parts(stages: tuple[int, ...]) -> tuple[Any, Any, Any]:
    nnx = require("flax.nnx")
    model = nnx_module(stages, jax.random.PRNGKey(0))
    return nnx, model, nnx.Optimizer(model, _sgd(), wrt=nnx.Param)


def _nnx_init(stages: tuple[int, ...]) -> Any:
    nnx = require("flax.nnx")
    return lambda key: nnx.state(nnx_module(stages, key))


def nnx_jit_setup(x: jax.Array, y: jax.Array, stages: tuple[int, ...]) -> Setup:
    """The NNX docs' training step: ``nnx.jit``, the optimizer updates the model in place."""
    nnx, model, optimizer = _nnx_parts(stages)

    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: xent(m(x), y))(model)
        optimizer.update(model, grads)
        return loss

    return Setup(step, (model, optimizer, x, y), _nnx_init(stages), nnx.jit)


def nnx_split_setup(x: jax.Array, y: jax.Array, stages: tuple[int, ...]) -> Setup:
    """The functional route: split once, merge inside ``jax.jit``, return the state."""
    nnx, model, optimizer = _nnx_parts(stages)
    graphdef, state = nnx.split((model, optimizer))

    def step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        grads = nnx.grad(lambda m: xent(m(x), y))(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer))

    return Setup(step, (state, x, y), _nnx_init(stages))


# ---------------------------------------------------------------- Equinox


@functools.cache
def _equinox_resnet() -> type:
    """The Equinox ResNet class: one example, channels first (C, H, W)."""
    eqx = require("equinox")

    def conv(cin: int, cout: int, k: int, stride: int, key: jax.Array) -> Any:
        return eqx.nn.Conv2d(cin, cout, k, stride, padding=k // 2, use_bias=False, key=key)

    def norm(c: int) -> Any:
        return eqx.nn.BatchNorm(c, axis_name="batch", eps=EPS, momentum=MOMENTUM,
                                mode="batch")

    class Bottleneck(eqx.Module):
        convs: tuple
        norms: tuple
        proj: tuple | None

        def __init__(self, cin: int, f: int, stride: int, proj: bool, key: jax.Array):
            k = jax.random.split(key, 4)
            self.convs = (conv(cin, f, 1, 1, k[0]), conv(f, f, 3, stride, k[1]),
                          conv(f, 4 * f, 1, 1, k[2]))
            self.norms = (norm(f), norm(f), norm(4 * f))
            self.proj = (conv(cin, 4 * f, 1, stride, k[3]), norm(4 * f)) if proj else None

        def __call__(self, x: jax.Array, state: Any) -> tuple[jax.Array, Any]:
            y = x
            for k, (c, n) in enumerate(zip(self.convs, self.norms)):
                y, state = n(c(y), state)
                if k < 2:
                    y = jax.nn.relu(y)
            if self.proj is not None:
                x, state = self.proj[1](self.proj[0](x), state)
            return jax.nn.relu(x + y), state

    class ResNet(eqx.Module):
        conv: Any
        norm: Any
        pool: Any
        blocks: tuple
        head: Any

        def __init__(self, stages: tuple[int, ...], key: jax.Array):
            keys = iter(jax.random.split(key, 2 + sum(stages)))
            self.conv = conv(3, 64, 7, 2, next(keys))
            self.norm = norm(64)
            self.pool = eqx.nn.MaxPool2d(3, 2, padding=1)
            layers, cin = [], 64
            for _, f, stride, proj in blocks(stages):
                layers.append(Bottleneck(cin, f, stride, proj, next(keys)))
                cin = 4 * f
            self.blocks = tuple(layers)
            self.head = eqx.nn.Linear(cin, CLASSES, key=next(keys))

        def __call__(self, x: jax.Array, state: Any) -> tuple[jax.Array, Any]:
            x, state = self.norm(self.conv(x), state)
            x = self.pool(jax.nn.relu(x))
            for block in self.blocks:
                x, state = block(x, state)
            return jax.nn.log_softmax(self.head(jnp.mean(x, axis=(1, 2)))), state

    return ResNet


def equinox_module(stages: tuple[int, ...], key: jax.Array) -> tuple[Any, Any]:
    """``(model, state)`` from ``eqx.nn.make_with_state``; the model takes one (C, H, W)."""
    eqx = require("equinox")
    return eqx.nn.make_with_state(_equinox_resnet())(stages, key)


def equinox_apply(model: Any, state: Any, x: jax.Array) -> tuple[jax.Array, Any]:
    """Batched forward: ``x`` [B, C, H, W] -> (log-probabilities [B, 1000], new state)."""
    return jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)


def equinox_setup(x: jax.Array, y: jax.Array, stages: tuple[int, ...]) -> Setup:
    eqx = require("equinox")
    tx = _sgd()
    model, state = equinox_module(stages, jax.random.PRNGKey(0))
    opt_state = tx.init(eqx.filter(model, eqx.is_inexact_array))

    def step(model, state, opt_state, x, y):
        def loss(model, state):
            logits, state = equinox_apply(model, state, x)
            return xent(logits, y), state
        grads, state = eqx.filter_grad(loss, has_aux=True)(model, state)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state, opt_state

    def init(key):
        return eqx.filter(equinox_module(stages, key), eqx.is_array)

    x_nchw = jnp.transpose(x, (0, 3, 1, 2))
    return Setup(step, (model, state, opt_state, x_nchw, y), init, eqx.filter_jit)


# ---------------------------------------------------------------- Haiku


def haiku_module(stages: tuple[int, ...]) -> Any:
    """``hk.without_apply_rng(hk.transform_with_state(forward))`` of the ResNet (NHWC)."""
    hk = require("haiku")

    def conv(f: int, k: int, stride: int) -> Any:
        p = k // 2
        return hk.Conv2D(f, k, stride, padding=[(p, p), (p, p)], with_bias=False)

    def norm(x: jax.Array) -> jax.Array:
        bn = hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=MOMENTUM,
                          eps=EPS)
        return bn(x, is_training=True)

    class Bottleneck(hk.Module):
        def __init__(self, f: int, stride: int, proj: bool, name: str):
            super().__init__(name=name)
            self.f, self.stride, self.proj = f, stride, proj

        def __call__(self, x: jax.Array) -> jax.Array:
            y = x
            for k, (kh, st) in enumerate(((1, 1), (3, self.stride), (1, 1))):
                y = norm(conv(self.f * (4 if k == 2 else 1), kh, st)(y))
                if k < 2:
                    y = jax.nn.relu(y)
            if self.proj:
                x = norm(conv(4 * self.f, 1, self.stride)(x))
            return jax.nn.relu(x + y)

    def forward(x: jax.Array) -> jax.Array:
        x = jax.nn.relu(norm(conv(64, 7, 2)(x)))
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
        x = hk.max_pool(x, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")
        for name, f, stride, proj in blocks(stages):
            x = Bottleneck(f, stride, proj, name)(x)
        return jax.nn.log_softmax(hk.Linear(CLASSES)(jnp.mean(x, axis=(1, 2))))

    return hk.without_apply_rng(hk.transform_with_state(forward))


def haiku_setup(x: jax.Array, y: jax.Array, stages: tuple[int, ...]) -> Setup:
    optax = require("optax")
    f = haiku_module(stages)
    tx = _sgd()
    params, state = jax.jit(f.init)(jax.random.PRNGKey(0), x)

    def step(params, state, opt_state, x, y):
        def loss(params):
            logits, new_state = f.apply(params, state, x)
            return xent(logits, y), new_state
        grads, new_state = jax.grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state

    def init(key):
        return f.init(key, jnp.zeros(x.shape, x.dtype))

    return Setup(step, (params, state, tx.init(params), x, y), init)
