"""A small DCGAN for 28x28 grey images, and the classifier that scores its samples.

Sizes are chosen so that the default run trains in minutes on two CPU cores; widen
``features`` for a GPU.
"""

from typing import Any

import jax
import jax.numpy as jnp

from flaxen import nn

LATENT_DIM = 64
NUM_CLASSES = 10  # conditional models: one class label per image (0: unconditional)


def depth_to_space(x: jax.Array, features: int) -> jax.Array:
    """``(b, h, w, 4 * features)`` to ``(b, 2h, 2w, features)``: channel block ``2i + j``
    becomes the pixel ``(i, j)`` of each 2x2 output cell."""
    b, h, w, _ = x.shape
    x = x.reshape((b, h, w, 2, 2, features)).transpose((0, 1, 3, 2, 4, 5))
    return x.reshape((b, 2 * h, 2 * w, features))


class Generator(nn.Module):
    """Noise to image: Dense -> 7x7 -> upsample (14x14) -> upsample (28x28).

    Each upsampling is a stride-2 transposed convolution written as a *sub-pixel
    convolution* (Shi et al., 2016): a 3x3 convolution to ``4 * features`` channels whose
    four channel blocks become the four pixels of each 2x2 output cell. A 4x4 stride-2
    transposed convolution is the special case where each of the four blocks sees only the
    2x2 inputs it overlaps; the sub-pixel form computes the same kind of map with a plain
    stride-1 convolution. (XLA:CPU computes the kernel gradient of strided transposed
    convolutions slowly: with this form a whole train step takes half the time; see the
    README.)

    Class-conditional (Mirza and Osindero, 2014) when ``num_classes > 0``: the one-hot label
    is joined to the noise, so each image is drawn for the class asked for.

    Input ``(batch, LATENT_DIM)`` float32 noise and ``(batch,)`` int32 labels in
    ``[0, num_classes)`` (ignored when ``num_classes=0``); output ``(batch, 28, 28, 1)``
    float32 in ``[-1, 1]`` (tanh). BatchNorm after the dense layer and the first upsampling, so the
    model has state (``mean``/``var`` of ``BatchNorm_1`` and ``BatchNorm_3``): create it
    with ``init_with_state`` and run it with ``call_with_state``. ``train=False``
    normalises with the running statistics.
    """

    def apply(self, z: jax.Array, labels: jax.Array, train: bool = True, features: int = 32,
              num_classes: int = NUM_CLASSES) -> jax.Array:
        bn = nn.BatchNorm.partial(use_running_average=not train, momentum=0.9)
        if num_classes:
            z = jnp.concatenate([z, jax.nn.one_hot(labels, num_classes, dtype=z.dtype)], -1)
        x = nn.Dense(z, features=7 * 7 * 2 * features, bias=False)
        x = nn.relu(bn(x))
        x = x.reshape((x.shape[0], 7, 7, 2 * features))
        x = nn.Conv(x, features=4 * features, kernel_size=(3, 3), bias=False)
        x = nn.relu(bn(depth_to_space(x, features)))
        x = nn.Conv(x, features=4, kernel_size=(3, 3))
        return jnp.tanh(depth_to_space(x, 1))


class Discriminator(nn.Module):
    """Image to one logit: two strided 4x4 convolutions with leaky ReLU, then Dense.

    Class-conditional when ``num_classes > 0``, by projection (Miyato and Koyama, 2018): the
    logit gains the dot product of the image's last features with a learned embedding of its
    label, so the discriminator judges "a real image of this class".

    Input ``(batch, 28, 28, 1)`` float32 in ``[-1, 1]`` and ``(batch,)`` int32 labels
    (ignored when ``num_classes=0``); output ``(batch,)`` float32 logits of "real". No
    BatchNorm, so real and fake images can share one batch.
    """

    def apply(self, x: jax.Array, labels: jax.Array, features: int = 32,
              num_classes: int = NUM_CLASSES) -> jax.Array:
        x = nn.Conv(x, features=features, kernel_size=(4, 4), strides=(2, 2))
        x = nn.leaky_relu(x, 0.2)
        x = nn.Conv(x, features=2 * features, kernel_size=(4, 4), strides=(2, 2))
        x = nn.leaky_relu(x, 0.2)
        x = x.reshape((x.shape[0], -1))
        logits = nn.Dense(x, features=1)[:, 0]
        if num_classes:
            embedding = nn.Embed(labels, num_embeddings=num_classes, features=x.shape[-1],
                                 name='projection')
            logits = logits + jnp.sum(embedding * x, axis=-1)
        return logits


class Classifier(nn.Module):
    """The MNIST example's CNN (the seed model), used here only to score samples.

    Input ``(batch, 28, 28, 1)`` float32 in ``[0, 1]``; output ``(batch, 10)`` float32
    log-probabilities; with ``features=True`` the pair ``(features, log_probs)``, where
    ``features`` are the ``(batch, 256)`` activations of the last hidden layer (the space in
    which the Frechet distance is measured).
    """

    def apply(self, x: jax.Array, features: bool = False) -> Any:
        x = nn.Conv(x, features=32, kernel_size=(3, 3))
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nn.Conv(x, features=64, kernel_size=(3, 3))
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))  # flatten
        h = nn.relu(nn.Dense(x, features=256))
        log_probs = nn.log_softmax(nn.Dense(h, features=10))
        return (h, log_probs) if features else log_probs
