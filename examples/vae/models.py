"""Kingma and Welling's variational autoencoder: MLP encoder and decoder, Bernoulli pixels.

One Module with three entry points. ``apply`` (training) encodes, draws ``z`` with the
reparameterisation trick and decodes; ``encode``, ``decode`` and ``generate`` are
``nn.module_method``s, so a trained ``Model`` answers ``model.encode(x)``,
``model.decode(z)`` and ``model.generate(z)`` on the same parameters.

Parameters (``hidden=500``, ``latents=20``, 784 pixels): ``encoder/hidden`` (784x500),
``encoder/mean`` and ``encoder/logvar`` (500x20 each), ``decoder/hidden`` (20x500),
``decoder/logits`` (500x784): 825,408 numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flaxen import nn

NUM_PIXELS = 28 * 28


class Encoder(nn.Module):
    """q(z | x): a diagonal Gaussian. ``x`` float32 ``(batch, 784)`` in {0, 1}.

    Returns ``(mean, logvar)``, each float32 ``(batch, latents)``.
    """

    def apply(self, x: jax.Array, latents: int = 20,
              hidden: int = 500) -> tuple[jax.Array, jax.Array]:
        h = nn.relu(nn.Dense(x, features=hidden, name="hidden"))
        mean = nn.Dense(h, features=latents, name="mean")
        logvar = nn.Dense(h, features=latents, name="logvar")
        return mean, logvar


class Decoder(nn.Module):
    """p(x | z): independent Bernoulli pixels. ``z`` float32 ``(batch, latents)``.

    Returns the Bernoulli logits, float32 ``(batch, 784)``.
    """

    def apply(self, z: jax.Array, hidden: int = 500) -> jax.Array:
        h = nn.relu(nn.Dense(z, features=hidden, name="hidden"))
        return nn.Dense(h, features=NUM_PIXELS, name="logits")


def reparameterize(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """A draw of ``z ~ N(mean, exp(logvar))`` that is differentiable in mean and logvar."""
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps


class VAE(nn.Module):
    """The VAE. Hyper-parameters (``latents``, ``hidden``) go in with ``VAE.partial``.

    ``apply(x)`` needs a random key (``nn.stochastic(key)`` or ``model(x, _rng=key)``) and
    returns ``(logits, mean, logvar)``: decoder logits ``(batch, 784)`` of one draw of ``z``
    and the encoder's ``(batch, latents)`` Gaussian.
    """

    def apply(self, x: jax.Array, latents: int = 20,
              hidden: int = 500) -> tuple[jax.Array, jax.Array, jax.Array]:
        mean, logvar = self.encode(x, latents=latents, hidden=hidden)
        z = reparameterize(nn.make_rng(), mean, logvar)
        return self.decode(z, hidden=hidden), mean, logvar

    # Each method gets all of the partial's keyword arguments, so each takes **unused.
    @nn.module_method
    def encode(self, x: jax.Array, latents: int = 20, hidden: int = 500,
               **unused) -> tuple[jax.Array, jax.Array]:
        """``(mean, logvar)`` of q(z | x), each ``(batch, latents)``."""
        return Encoder(x, latents=latents, hidden=hidden, name="encoder")

    @nn.module_method
    def decode(self, z: jax.Array, hidden: int = 500, **unused) -> jax.Array:
        """Bernoulli logits ``(batch, 784)`` of p(x | z)."""
        return Decoder(z, hidden=hidden, name="decoder")

    @nn.module_method
    def generate(self, z: jax.Array, hidden: int = 500, **unused) -> jax.Array:
        """Images for latent codes ``z`` ``(batch, latents)``: pixel probabilities
        ``(batch, 28, 28)`` in [0, 1] (the Bernoulli means)."""
        probs = nn.sigmoid(self.decode(z, hidden=hidden))
        return probs.reshape((z.shape[0], 28, 28))
