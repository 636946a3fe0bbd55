"""A small U-Net (Ronneberger et al., 2015) that gives every pixel one of 11 class scores."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from flaxen import nn

FEATURES = (32, 64, 128)  # channels per resolution: 16x16, 8x8 and the 4x4 bottom
STEM = 16  # channels of the full-resolution stem (its second layer has twice as many)
PATCH = 4  # the network runs on 4x4 pixel cells: (64, 64, 1) in, (16, 16, ...) inside
HEAD = 64  # hidden channels of the per-cell head that sees the cell's own pixels
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


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
    """``(n, h, w, c)`` to ``(n, h/p, w/p, p*p*c)``: each ``p x p`` cell becomes one pixel."""
    n, h, w, c = x.shape
    x = x.reshape((n, h // p, p, w // p, p, c)).transpose((0, 1, 3, 2, 4, 5))
    return x.reshape((n, h // p, w // p, p * p * c))


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
    """The inverse of ``space_to_depth``: ``(n, h, w, p*p*c)`` to ``(n, h*p, w*p, c)``."""
    n, h, w, pc = x.shape
    x = x.reshape((n, h, w, p, p, pc // (p * p))).transpose((0, 1, 3, 2, 4, 5))
    return x.reshape((n, h * p, w * p, pc // (p * p)))


class Stem(nn.Module):
    """The first layers, at full and half resolution, before the 4x4 cells.

    3x3 convolution with ReLU at full resolution, 2x2 max pooling, 3x3 convolution (no bias)
    with GroupNorm and ReLU at half resolution, 2x2 max pooling. Garments differ in details a
    few pixels wide (collars, sleeves, straps), which these layers see before the cells
    compress them.

    Input ``(batch, h, w, 1)`` float32; output ``(batch, h/4, w/4, 2 * features)`` float32.
    Parameters: ``Conv_0``, ``Conv_1`` and ``GroupNorm_2``.
    """

    def apply(self, x: jax.Array, features: int) -> jax.Array:
        x = nn.relu(nn.Conv(x, features=features, kernel_size=(3, 3)))
        x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nn.Conv(x, features=2 * features, kernel_size=(3, 3), bias=False)  # GroupNorm shifts
        x = nn.relu(nn.GroupNorm(x, num_groups=None, group_size=GROUP_SIZE))
        return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))


class UNet(nn.Module):
    """Encoder-decoder with skip connections, on cells of ``patch x patch`` pixels.

    A full-resolution stem (``Stem``: ``stem`` channels, then ``2 * stem`` at half
    resolution; 0: no stem) brings the canvas down to one position per 4x4 pixel cell.
    ``space_to_depth`` also turns the ``(64, 64, 1)`` canvas into ``(16, 16, 16)``, each cell
    one position with its 16 pixels as channels, for the head (and, without a stem, for the
    encoder). The encoder halves the resolution ``len(features) - 1`` times (2x2 max pooling
    after each ``ConvBlock``). At the 4x4 bottom (one position per 16x16 pixels; a 28x28
    garment spans about two) a context branch adds a summary of the whole canvas (mean over
    positions, 1x1 convolution, ReLU) to every position. The decoder doubles the resolution
    back with 2x2 stride-2 transposed convolutions and joins each level's encoder output (the
    skip connection) before its ``ConvBlock``. The head joins the cell's own 16 input pixels
    to the decoder's output, then a 1x1 convolution with ReLU and a last 1x1 convolution give
    11 logits for each of the cell's 16 pixels (``depth_to_space``). What is hard here is the
    class of a garment, not its outline (a pixel is the garment's where its grey value passes
    a threshold): the stem sees the details that tell a shirt from a coat, and the wide
    layers run at low resolution.

    Input ``(batch, 64, 64, 1)`` float32 in [0, 1] (any height and width divisible by
    ``patch * 2 ** (len(features) - 1)``); output ``(batch, 64, 64, num_classes)`` float32
    logits.
    Parameters: ``stem`` (Stem), ``down_<i>`` (ConvBlock), ``bottom``, ``context`` (1x1 Conv),
    ``upsample_<i>`` (ConvTranspose), ``up_<i>`` (ConvBlock), ``head`` and ``logits``
    (1x1 Conv).
    """

    def apply(self, x: jax.Array, num_classes: int = 11,
              features: Sequence[int] = FEATURES, patch: int = PATCH,
              head: int = HEAD, stem: int = STEM) -> jax.Array:
        pixels = space_to_depth(x, patch)
        if stem:
            if patch != 4:
                raise ValueError(f'UNet: a stem brings the canvas down 4 times, so it needs '
                                 f'patch=4, got patch={patch}; pass stem=0 for other cells.')
            x = Stem(x, stem, name='stem')
        else:
            x = pixels
        skips = []
        for i, f in enumerate(features[:-1]):
            x = ConvBlock(x, f, name=f'down_{i}')
            skips.append(x)
            x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = ConvBlock(x, features[-1], name='bottom')
        summary = jnp.mean(x, axis=(1, 2), keepdims=True)  # (batch, 1, 1, features[-1])
        x = x + nn.relu(nn.Conv(summary, features=features[-1], kernel_size=(1, 1),
                                name='context'))
        for i in reversed(range(len(features) - 1)):
            x = nn.ConvTranspose(x, features=features[i], kernel_size=(2, 2), strides=(2, 2),
                                 name=f'upsample_{i}')
            x = jnp.concatenate([x, skips[i]], axis=-1)
            x = ConvBlock(x, features[i], name=f'up_{i}')
        x = jnp.concatenate([x, pixels], axis=-1)
        x = nn.relu(nn.Conv(x, features=head, kernel_size=(1, 1), name='head'))
        x = nn.Conv(x, features=num_classes * patch * patch, kernel_size=(1, 1), name='logits')
        return depth_to_space(x, patch)
