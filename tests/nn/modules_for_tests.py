"""Small modules written against the public API, used by the core tests.

They are deliberately independent of flaxen's own layers, so the Module-system tests
check the core alone.
"""

import jax.numpy as jnp

from flaxen import nn


class Affine(nn.Module):
    """``x @ kernel + bias``: x (..., in) -> (..., features)."""

    def apply(self, x, features, kernel_init=nn.initializers.lecun_normal()):
        kernel = self.param("kernel", (x.shape[-1], features), kernel_init)
        bias = self.param("bias", (features,), nn.initializers.zeros)
        y = x @ kernel
        return y + bias.reshape((1,) * (y.ndim - 1) + (-1,))  # rank promotion raises here


class Scale(nn.Module):
    """Multiplies by a learned scalar-per-feature."""

    def apply(self, x):
        scale = self.param("scale", (x.shape[-1],), nn.initializers.ones)
        return x * scale.reshape((1,) * (x.ndim - 1) + (-1,))


class Counter(nn.Module):
    """Counts its calls in state; returns x unchanged."""

    def apply(self, x):
        count = self.state("count", (), lambda key, shape: jnp.zeros(shape, jnp.int32))
        if not self.is_initializing():
            count.value = count.value + 1
        return x


class Noisy(nn.Module):
    """Adds uniform noise drawn with nn.make_rng()."""

    def apply(self, x):
        import jax

        return x + jax.random.uniform(nn.make_rng(), x.shape)


class MLP(nn.Module):
    def apply(self, x, hidden=4, out=2):
        x = Affine(x, hidden)
        x = nn.relu(x)
        return Affine(x, out)
