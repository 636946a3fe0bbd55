"""The seed's CNN for 28x28 grey images (MNIST, Fashion-MNIST)."""

import jax

from flaxen import nn


class CNN(nn.Module):
    """A simple CNN model.

    Input ``(batch, 28, 28, 1)`` float32; output ``(batch, 10)`` float32 log-probabilities.
    Parameters: ``Conv_0`` (3x3, 32), ``Conv_1`` (3x3, 64), ``Dense_2`` (256), ``Dense_3`` (10).
    """

    def apply(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(x, features=32, kernel_size=(3, 3))
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nn.Conv(x, features=64, kernel_size=(3, 3))
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))  # flatten
        x = nn.Dense(x, features=256)
        x = nn.relu(x)
        x = nn.Dense(x, features=10)
        x = nn.log_softmax(x)
        return x
