"""The pictures of a run: learning curves, reconstructions of test images, samples."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as onp

from flaxen import nn
from flaxen.metrics.tensorboard import encode_png

SCALE = 2  # each pixel drawn as SCALE x SCALE, so the PNGs read well in a README


def grid(images, columns, pad=1):
    """Tiles images ``(N, 28, 28)`` in [0, 1] into one ``(H, W)`` float array, rows of
    ``columns``, separated by ``pad`` grey pixels."""
    images = onp.asarray(images, onp.float32)
    n, h, w = images.shape
    rows = -(-n // columns)
    out = onp.full((rows * (h + pad) + pad, columns * (w + pad) + pad), 0.5, onp.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        out[pad + r * (h + pad):pad + r * (h + pad) + h,
            pad + c * (w + pad):pad + c * (w + pad) + w] = image
    return onp.kron(out, onp.ones((SCALE, SCALE), onp.float32))


def save_png(path, image):
    with open(path, 'wb') as f:
        f.write(encode_png((onp.clip(image, 0.0, 1.0) * 255).round().astype(onp.uint8)))


@jax.jit
def reconstruct(model, x):
    """Pixel probabilities ``(B, 784)`` decoded from the posterior means of ``x``."""
    mean, _ = model.encode(x)
    return nn.sigmoid(model.decode(mean))


@functools.partial(jax.jit, static_argnums=2)
def sample(model, key, num_samples):
    """``num_samples`` images ``(N, 28, 28)`` for ``z ~ N(0, I)``, via ``model.generate``."""
    latents = model.params['encoder']['mean']['bias'].shape[0]
    return model.generate(jax.random.normal(key, (num_samples, latents), jnp.float32))


def write_pictures(model, test_ds, key, out, per_class=2, num_samples=64):
    """Writes ``reconstructions.png`` and ``samples.png`` into ``out``.

    Reconstructions: ``per_class`` test images of each class (binarised inputs), each row of
    inputs followed by a row of their reconstructions (the decoder's pixel probabilities
    at the posterior mean). Samples: ``model.generate(z)`` for ``num_samples`` draws of
    ``z ~ N(0, I)``.

    Returns:
      ``{'reconstructions': grid, 'samples': grid}``, float ``(H, W)`` images in [0, 1].
    """
    labels = test_ds['label']
    picks = [i for k in range(10) for i in onp.flatnonzero(labels == k)[:per_class]]
    picks = onp.array(picks).reshape((10, -1)).T.reshape(-1)  # rows of one image per class
    x = jnp.asarray(test_ds['image'][picks], jnp.float32)
    recon = reconstruct(model, x)
    columns = 10
    rows = []
    for r in range(0, len(picks), columns):
        rows += [onp.asarray(x[r:r + columns]), onp.asarray(recon[r:r + columns])]
    recon_grid = grid(onp.concatenate(rows).reshape((-1, 28, 28)), columns)

    sample_grid = grid(sample(model, key, num_samples), int(onp.sqrt(num_samples)))
    save_png(os.path.join(out, 'reconstructions.png'), recon_grid)
    save_png(os.path.join(out, 'samples.png'), sample_grid)
    return {'reconstructions': recon_grid, 'samples': sample_grid}


def plot_learning_curves(history, path, title=''):
    """A PNG of the negative ELBO (train and test) and the KL term of the test ELBO.

    Per epoch; for runs of fewer than 3 epochs the training curve is drawn per step.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    epochs = [r['step'] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    if len(history) < 3:
        steps = [s for r in history for s in r['train_loss_steps']]
        per_epoch = len(history[0]['train_loss_steps'])
        ax.plot(onp.arange(1, len(steps) + 1), steps, lw=0.8, label='train (per step)')
        ax.plot([e * per_epoch for e in epochs], [r['test_loss'] for r in history], 's',
                label='test (end of epoch)')
        ax.set_xlabel('step')
    else:
        ax.plot(epochs, [r['train_loss'] for r in history], 'o-', label='train')
        ax.plot(epochs, [r['test_loss'] for r in history], 's-', label='test')
        ax.set_xlabel('epoch')
    ax.set_ylabel('negative ELBO (nats per image)')
    axes[1].plot(epochs, [r['test_kl'] for r in history], 's-', color='C1')
    axes[1].set_xlabel('epoch')
    axes[1].set_ylabel('test KL(q(z|x) || p(z)) (nats per image)')
    for a in axes:
        a.grid(True, alpha=0.3)
    ax.legend()
    last = history[-1]
    fig.suptitle(f'{title}: test -ELBO {last["test_loss"]:.2f} nats after epoch {last["step"]}')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
