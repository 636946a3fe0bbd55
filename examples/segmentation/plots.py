"""The two PNGs of a run: learning curves, and test canvases with their true and predicted
labels side by side (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

# Background black, then one colour per class (matplotlib's tab10).
PALETTE = np.array([
    [0, 0, 0], [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]], np.uint8)


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def learning_curves(history: Sequence[dict], steps_per_epoch: int, path: str,
                    title: str = '') -> None:
    """Loss (left) and test mean IoU and pixel accuracy (right).

    ``history`` holds the rows of metrics.jsonl: training-loss rows every few steps and one
    row per epoch (with an ``'epoch'`` key). With fewer than 3 epochs the x axis is the step and
    the left panel shows the training loss of every logged step; otherwise it is the epoch.
    """
    plt = _pyplot()
    epochs = [r for r in history if 'epoch' in r]
    per_step = len(epochs) < 3
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if per_step:
        steps = [r for r in history if 'epoch' not in r]
        left.plot([r['step'] for r in steps], [r['train_loss'] for r in steps], '-',
                  label='train (mean of 10 steps)')
        x = [r['step'] for r in epochs]
        xlabel = 'step'
    else:
        x = [r['epoch'] for r in epochs]
        left.plot(x, [r['train_loss'] for r in epochs], 'o-', label='train')
        xlabel = 'epoch'
    left.plot(x, [r['test_loss'] for r in epochs], 's-', label='test')
    left.set_ylabel('cross-entropy per pixel')
    left.set_yscale('log')
    right.plot(x, [r['test_mean_iou'] for r in epochs], 's-', label='test mean IoU (11 classes)')
    right.plot(x, [r['test_pixel_accuracy'] for r in epochs], 'o--', label='test pixel accuracy')
    right.set_ylabel('test metric')
    for ax in (left, right):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def colorize(labels: np.ndarray) -> np.ndarray:
    """uint8 label map ``(h, w)`` (0..10) to an RGB image ``(h, w, 3)``."""
    return PALETTE[labels]


def predictions(model, test_ds: dict, names: Sequence[str], path: str, num: int = 6) -> None:
    """A grid: for each of the first ``num`` test canvases, the input, the true labels and the
    model's labels (one row each); a legend names the colours."""
    plt = _pyplot()
    images = test_ds['image'][:num]
    logits = jax.jit(model)((images.astype(np.float32) / 255.0)[..., None])
    predicted = np.asarray(jax.device_get(logits)).argmax(-1)
    height = 2.2 * num + 0.6  # the last 0.6 inch for the legend
    fig, axes = plt.subplots(num, 3, figsize=(6.6, height), squeeze=False)
    for i in range(num):
        for ax, img, what in zip(axes[i], (images[i], colorize(test_ds['label'][i]),
                                           colorize(predicted[i])),
                                 ('input', 'ground truth', 'prediction')):
            ax.imshow(img, cmap='gray' if img.ndim == 2 else None, vmin=0, vmax=255,
                      interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(what)
    handles = [plt.Rectangle((0, 0), 1, 1, color=PALETTE[k] / 255.0) for k in range(len(names))]
    fig.legend(handles, names, loc='lower center', ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.6 / height, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
