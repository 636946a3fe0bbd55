"""A small U-Net (Ronneberger et al., 2015) that gives every pixel one of 11 class scores."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from flaxen import nn

FEATURES = (8, 16, 32, 64)  # channels per resolution: 64x64, 32x32, 16x16 and the 8x8 bottom
GROUP_SIZE = 4  # GroupNorm: channels per group


class ConvBlock(nn.Module):
    """Two times: 3x3 convolution (no bias), GroupNorm, ReLU.

    Input ``(batch, h, w, c)`` float32; output ``(batch, h, w, features)`` float32.
    Parameters: ``Conv_0``, ``GroupNorm_1``, ``Conv_2``, ``GroupNorm_3``.
    """

    def apply(self, x: jax.Array, features: int) -> jax.Array:
        for _ in range(2):
            x = nn.Conv(x, features=features, kernel_size=(3, 3), bias=False)  # GroupNorm shifts
            x = nn.GroupNorm(x, num_groups=None, group_size=GROUP_SIZE)
            x = nn.relu(x)
        return x


class UNet(nn.Module):
    """Encoder-decoder with skip connections.

    The encoder halves the resolution ``len(features) - 1`` times (2x2 max pooling after each
    ``ConvBlock``); the decoder doubles it back with 2x2 stride-2 transposed convolutions and
    joins each level's encoder output (the skip connection) before its ``ConvBlock``.

    Input ``(batch, 64, 64, 1)`` float32 in [0, 1] (any height and width divisible by
    ``2 ** (len(features) - 1)``); output ``(batch, 64, 64, num_classes)`` float32 logits.
    Parameters: ``down_<i>`` (ConvBlock), ``bottom``, ``upsample_<i>`` (ConvTranspose),
    ``up_<i>`` (ConvBlock), ``logits`` (1x1 Conv).
    """

    def apply(self, x: jax.Array, num_classes: int = 11,
              features: Sequence[int] = FEATURES) -> jax.Array:
        skips = []
        for i, f in enumerate(features[:-1]):
            x = ConvBlock(x, f, name=f'down_{i}')
            skips.append(x)
            x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = ConvBlock(x, features[-1], name='bottom')
        for i in reversed(range(len(features) - 1)):
            x = nn.ConvTranspose(x, features=features[i], kernel_size=(2, 2), strides=(2, 2),
                                 name=f'upsample_{i}')
            x = jnp.concatenate([x, skips[i]], axis=-1)
            x = ConvBlock(x, features[i], name=f'up_{i}')
        return nn.Conv(x, features=num_classes, kernel_size=(1, 1), name='logits')
