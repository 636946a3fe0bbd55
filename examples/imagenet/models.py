"""ResNet v1.5 for ImageNet: ResNet-18/34 (basic blocks) and 50/101/152 (bottleneck blocks).

The layout is the standard one (He et al. 2016, with the stride of a bottleneck block on
its 3x3 convolution, "v1.5"), so ResNet-50 has exactly 25,557,032 parameters: every
convolution without bias, each BatchNorm with ``scale`` and ``bias``, the classifier
with bias. The BatchNorm running statistics are state, not parameters: they live in the
state collection returned by ``init_with_state``.

Convolutions use symmetric explicit padding (3 for the 7x7 stem, 1 for 3x3), as most
reference implementations do, so spatial sizes are ``ceil(n / stride)``.

Mixed precision: ``dtype=jnp.bfloat16`` computes convolutions and matmuls in bfloat16
while the parameters stay float32; BatchNorm statistics and the logits are float32.

Example::

    model_def = models.ResNet50.partial(num_classes=1000)
    _, params, state = model_def.init_with_state(rng, jnp.zeros((1, 224, 224, 3)))
    logits, new_state = model_def.call_with_state(params, state, images, train=True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from flaxen import nn
from flaxen.errors import ShapeError

# BatchNorm as in the standard recipe: running average momentum 0.9, epsilon 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _norm(train: bool, axis_name: str | None, dtype: Any, zero_init: bool = False) -> Any:
    return nn.BatchNorm.partial(
        use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
        axis_name=axis_name, dtype=dtype,
        scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones)


def _conv(dtype: Any) -> Any:
    return nn.Conv.partial(bias=False, dtype=dtype,
                           kernel_init=nn.initializers.variance_scaling(2.0, "fan_out",
                                                                        "normal"))


def _pad(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
    p = kernel // 2
    return ((p, p), (p, p))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34). Output ``[B, H/s, W/s, filters]``."""

    def apply(self, x: jax.Array, filters: int, strides: tuple[int, int] = (1, 1),
              train: bool = True, axis_name: str | None = None,
              zero_init_last_bn: bool = True, dtype: Any = jnp.float32) -> jax.Array:
        conv = _conv(dtype)
        residual = x
        y = conv(x, filters, (3, 3), strides, padding=_pad(3), name="conv1")
        y = nn.relu(_norm(train, axis_name, dtype)(y, name="bn1"))
        y = conv(y, filters, (3, 3), padding=_pad(3), name="conv2")
        y = _norm(train, axis_name, dtype, zero_init_last_bn)(y, name="bn2")
        if residual.shape != y.shape:
            residual = conv(residual, filters, (1, 1), strides, padding="VALID",
                            name="proj_conv")
            residual = _norm(train, axis_name, dtype)(residual, name="proj_bn")
        return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 convolutions (ResNet-50+). Output ``[..., 4 * filters]``."""

    def apply(self, x: jax.Array, filters: int, strides: tuple[int, int] = (1, 1),
              train: bool = True, axis_name: str | None = None,
              zero_init_last_bn: bool = True, dtype: Any = jnp.float32) -> jax.Array:
        conv = _conv(dtype)
        residual = x
        y = conv(x, filters, (1, 1), padding="VALID", name="conv1")
        y = nn.relu(_norm(train, axis_name, dtype)(y, name="bn1"))
        y = conv(y, filters, (3, 3), strides, padding=_pad(3), name="conv2")
        y = nn.relu(_norm(train, axis_name, dtype)(y, name="bn2"))
        y = conv(y, filters * 4, (1, 1), padding="VALID", name="conv3")
        y = _norm(train, axis_name, dtype, zero_init_last_bn)(y, name="bn3")
        if residual.shape != y.shape:
            residual = conv(residual, filters * 4, (1, 1), strides, padding="VALID",
                            name="proj_conv")
            residual = _norm(train, axis_name, dtype)(residual, name="proj_bn")
        return nn.relu(residual + y)


class ResNet(nn.Module):
    """ResNet v1.5. Returns float32 log-probabilities ``[B, num_classes]``.

    Input: images ``[B, H, W, C]`` (already normalised), any float dtype.
    """

    def apply(self, x: jax.Array, num_classes: int = 1000,
              stage_sizes: Sequence[int] = (3, 4, 6, 3), bottleneck: bool = True,
              num_filters: int = 64, train: bool = True, axis_name: str | None = None,
              zero_init_last_bn: bool = True, small_inputs: bool = False,
              dtype: Any = jnp.float32) -> jax.Array:
        """Args:
          x: ``[B, H, W, C]`` normalised images.
          num_classes: the number of output classes.
          stage_sizes: blocks per stage (four stages for the standard depths).
          bottleneck: bottleneck blocks (50+) or basic blocks (18/34).
          num_filters: width of the first stage (64 standard), doubled each stage.
          train: batch statistics and running-average updates (True), or the running
            averages only (False, evaluation).
          axis_name: a ``pmap``/``shard_map`` axis over which BatchNorm averages its batch
            statistics. Leave None under ``jax.jit`` with a sharded batch: there the batch
            mean already covers the global batch.
          zero_init_last_bn: initialise the last BatchNorm scale of each block to zero so
            each block starts as the identity (Goyal et al. 2017).
          small_inputs: a 3x3 stride-1 stem without max-pool, for 28x28/32x32 images.
          dtype: computation dtype (``jnp.bfloat16`` for mixed precision); params stay f32.
        """
        if x.ndim != 4:
            raise ShapeError(self.label, "input images", "rank 4 [batch, height, width, "
                             "channels]", f"shape {x.shape}",
                             "Add a batch axis with x[None] for a single image.")
        conv = _conv(dtype)
        x = x.astype(dtype)
        if small_inputs:
            x = conv(x, num_filters, (3, 3), padding=_pad(3), name="init_conv")
        else:
            x = conv(x, num_filters, (7, 7), (2, 2), padding=_pad(7), name="init_conv")
        x = nn.relu(_norm(train, axis_name, dtype)(x, name="init_bn"))
        if not small_inputs:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
        block = BottleneckBlock if bottleneck else BasicBlock
        for i, size in enumerate(stage_sizes):
            for j in range(size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = block(x, num_filters * 2**i, strides=strides, train=train,
                          axis_name=axis_name, zero_init_last_bn=zero_init_last_bn,
                          dtype=dtype)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        x = nn.Dense(x, num_classes, kernel_init=nn.initializers.lecun_normal())
        return nn.log_softmax(x)


ResNet18 = ResNet.partial(stage_sizes=(2, 2, 2, 2), bottleneck=False)
ResNet34 = ResNet.partial(stage_sizes=(3, 4, 6, 3), bottleneck=False)
ResNet50 = ResNet.partial(stage_sizes=(3, 4, 6, 3), bottleneck=True)
ResNet101 = ResNet.partial(stage_sizes=(3, 4, 23, 3), bottleneck=True)
ResNet152 = ResNet.partial(stage_sizes=(3, 8, 36, 3), bottleneck=True)

MODELS = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnet152": ResNet152,
}


def get_model(name: str) -> Any:
    """The Module class for ``name`` (``resnet18`` ... ``resnet152``)."""
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}; choose one of {sorted(MODELS)}.") from None
