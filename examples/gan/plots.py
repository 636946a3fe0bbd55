"""Sample grids (PNG) and the training curves (matplotlib, Agg backend)."""

from __future__ import annotations

import os

import numpy as np

from flaxen.metrics.tensorboard import encode_png


def grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """``(N, 28, 28, 1)`` images in ``[0, 1]`` as one uint8 ``(rows*30, columns*30)`` grid."""
    images = np.clip(np.asarray(images, np.float32)[..., 0], 0.0, 1.0)
    n, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.ones((rows * (h + 2), columns * (w + 2)), np.float32)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        canvas[r * (h + 2) + 1:r * (h + 2) + 1 + h, c * (w + 2) + 1:c * (w + 2) + 1 + w] = image
    return np.round(canvas * 255).astype(np.uint8)


def save_png(image: np.ndarray, path: str, scale: int = 1) -> None:
    """Writes a uint8 ``(H, W)`` image, each pixel as a ``scale x scale`` block."""
    image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path, 'wb') as f:
        f.write(encode_png(image))


def plot_curves(steps: list[dict], epochs: list[dict], path: str, title: str,
                with_quality: bool) -> None:
    """Losses per logged step; Frechet distance and inception score per epoch."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    panels = 3 if with_quality else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    x = [r['step'] for r in steps]
    ax.plot(x, [r['d_loss'] for r in steps], label='discriminator')
    ax.plot(x, [r['g_loss'] for r in steps], label='generator')
    ax.set_xlabel('step')
    ax.set_ylabel('loss (mean of 10 steps)')
    ax.grid(True, alpha=0.3)
    ax.legend()
    if with_quality:
        for ax, key, label in ((axes[0, 1], 'fid', 'Frechet distance (classifier features)'),
                               (axes[0, 2], 'inception_score', 'inception score (classifier)')):
            scored = [r for r in epochs if key in r]  # a resumed run may lack early scores
            ax.plot([r['step'] for r in scored], [r[key] for r in scored], 'o-')
            ax.set_xlabel('epoch')
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
