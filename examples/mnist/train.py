"""MNIST example.

This script trains a simple Convolutional Neural Net on the MNIST dataset.
The data is read from the standard IDX files with NumPy (input_pipeline.py); no TensorFlow.

The functions below are the seed README's program, in its order and words; what a real run
adds around them (several devices and processes, progress bar, checkpoints and --resume,
TensorBoard, metrics.jsonl, the plot, the summary, flag checks) is in extras.py, and the flags
that the seed does not have are defined at the end of this file.

    python examples/mnist/train.py                                # MNIST, or see README
    python examples/mnist/train.py --dataset=fashion_mnist --output_dir=/tmp/mnist
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as onp
from absl import app, flags, logging
from jax import random

from flaxen import distributed, nn, optim

try:  # as part of the repository's `examples` package (tests, `python -m examples.mnist.train`)
    from examples.mnist import extras, input_pipeline
except ImportError:  # as a script, `python examples/mnist/train.py`, or in a forked copy
    import extras
    import input_pipeline

FLAGS = flags.FLAGS

flags.DEFINE_float(
    'learning_rate', default=0.1,
    help=('The learning rate for the momentum optimizer.'))

flags.DEFINE_float(
    'momentum', default=0.9,
    help=('The decay rate used for the momentum optimizer.'))

flags.DEFINE_integer(
    'batch_size', default=128,
    help=('Batch size for training (global: all devices of all processes together).'))

flags.DEFINE_integer(
    'num_epochs', default=10,
    help=('Number of training epochs (in total: a resumed run continues up to this many).'))


class CNN(nn.Module):
    """A simple CNN model.

    Input ``(batch, 28, 28, 1)`` float32; output ``(batch, 10)`` float32 log-probabilities.
    Parameters: ``Conv_0`` (3x3, 32), ``Conv_1`` (3x3, 64), ``Dense_2`` (256), ``Dense_3`` (10).
    """

    def apply(self, x):
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


@jax.jit  # one compiled program instead of many small eager initialisers
def create_model(key):
    _, model = CNN.create_by_shape(key, [((1, 28, 28, 1), jnp.float32)])
    return model


def create_optimizer(model, learning_rate, beta):
    optimizer_def = optim.Momentum(learning_rate=learning_rate, beta=beta)
    optimizer = optimizer_def.create(model)
    return optimizer


def onehot(labels, num_classes=10):
    x = (labels[..., None] == jnp.arange(num_classes)[None])
    return x.astype(jnp.float32)


def cross_entropy_loss(logits, labels):
    return -jnp.mean(jnp.sum(onehot(labels) * logits, axis=-1))


def compute_metrics(logits, labels):
    loss = cross_entropy_loss(logits, labels)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    metrics = {
        'loss': loss,
        'accuracy': accuracy,
    }
    return metrics


@jax.jit
def train_step(optimizer, batch):
    """Train for a single step."""
    def loss_fn(model):
        logits = model(batch['image'])
        loss = cross_entropy_loss(logits, batch['label'])
        return loss, logits
    optimizer, _, logits = optimizer.optimize(loss_fn)
    metrics = compute_metrics(logits, batch['label'])
    return optimizer, metrics


@jax.jit
def eval_step(model, batch):
    """Sums (not means) over a batch, so batches padded with ``mask == 0`` rows add up exactly."""
    logits = model(batch['image'])
    mask = batch['mask']
    nll = -jnp.sum(onehot(batch['label']) * logits, axis=-1)
    correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
    return {'loss': jnp.sum(nll * mask), 'accuracy': jnp.sum(correct * mask),
            'count': jnp.sum(mask)}


def train_epoch(optimizer, train_ds, batch_size, epoch, rng, mesh=None, progress=False):
    """Train for a single epoch."""
    train_ds_size = len(train_ds['image'])
    steps_per_epoch = train_ds_size // batch_size

    perms = rng.permutation(len(train_ds['image']))
    perms = perms[:steps_per_epoch * batch_size]  # skip incomplete batch
    perms = perms.reshape((steps_per_epoch, batch_size))
    # Every process draws the same global batches and takes its own rows of each.
    perms = perms[:, distributed.local_rows(batch_size, mesh)]
    batch_metrics = []
    for perm in extras.progress_bar(perms, epoch, batch_metrics, progress):
        batch = {k: v[perm] for k, v in train_ds.items()}
        optimizer, metrics = train_step(optimizer, extras.put_batch(batch, mesh))
        batch_metrics.append(metrics)

    # compute mean of metrics across each batch in epoch.
    batch_metrics_np = jax.device_get(batch_metrics)
    epoch_metrics_np = {
        k: onp.mean([metrics[k] for metrics in batch_metrics_np])
        for k in batch_metrics_np[0]}
    epoch_metrics_np['per_step'] = batch_metrics_np  # for the per-step curves of short runs

    logging.info('train epoch: %d, loss: %.4f, accuracy: %.2f', epoch,
                 epoch_metrics_np['loss'], epoch_metrics_np['accuracy'] * 100)

    return optimizer, epoch_metrics_np


def eval_model(model, test_ds, mesh=None):
    """Mean loss and accuracy over the whole test set, in padded batches (extras.eval_batches)."""
    metrics = [eval_step(model, batch) for batch in extras.eval_batches(test_ds, mesh)]
    metrics = jax.device_get(metrics)
    summary = {k: float(sum(m[k] for m in metrics)) for k in metrics[0]}
    return summary['loss'] / summary['count'], summary['accuracy'] / summary['count']


def get_datasets(cfg):
    """Load MNIST train and test datasets into memory (an ``input_pipeline.Loaded``)."""
    return input_pipeline.load(
        cfg.dataset, cfg.data_dir, num_train_examples=cfg.num_train_examples or None,
        allow_fallback=cfg.allow_fallback)


def train(train_ds, test_ds, cfg):
    """Train MNIST to completion."""
    rng = random.PRNGKey(cfg.seed)

    batch_size = cfg.batch_size
    num_epochs = cfg.num_epochs
    run = extras.Run(cfg, len(train_ds['image']))  # devices, output folder, checkpoints

    model = create_model(rng)
    optimizer = create_optimizer(model, cfg.learning_rate, cfg.momentum)
    optimizer, first_epoch = run.restore(optimizer)  # --resume; replicated over the devices

    for epoch in range(first_epoch, num_epochs + 1):
        # The shuffling depends on (seed, epoch) only, so a resumed run sees the same batches.
        input_rng = onp.random.RandomState([cfg.seed, epoch])
        optimizer, train_metrics = train_epoch(
            optimizer, train_ds, batch_size, epoch, input_rng, run.mesh, run.progress)
        loss, accuracy = eval_model(optimizer.target, test_ds, run.mesh)
        logging.info('eval epoch: %d, loss: %.4f, accuracy: %.2f',
                     epoch, loss, accuracy * 100)
        run.end_epoch(epoch, optimizer, train_metrics, test_loss=loss, test_accuracy=accuracy)
    run.close()
    return optimizer


def main(argv):
    started = time.time()
    with extras.user_errors():  # one `Error: ...` line and exit status 2
        cfg = extras.start(argv, FLAGS)  # flags checked, processes connected
        loaded = get_datasets(cfg)
        train_ds, test_ds, cfg.dataset = loaded.train, loaded.test, loaded.name
        logging.info('Dataset %s: %d train and %d test examples; output in %s', cfg.dataset,
                     len(train_ds['image']), len(test_ds['image']), cfg.output_dir)
        train(train_ds, test_ds, cfg)
    if jax.process_index() == 0:
        print('\n'.join(extras.summary_lines(loaded, cfg, time.time() - started)), flush=True)


# -- Flags added to the seed's four ----------------------------------------------------------

flags.DEFINE_enum(
    'dataset', default='mnist', enum_values=['mnist', 'fashion_mnist', 'idx'],
    help=('mnist (downloaded once, then cached), fashion_mnist, or idx (any four IDX files '
          'in --data_dir, no checksums). If --dataset is not given and MNIST can be neither '
          'found nor downloaded, the locally installed Fashion-MNIST is used, with a warning.'))

flags.DEFINE_string(
    'data_dir', default=None,
    help=('A folder with the four IDX files (gzip or not); no download then. Without it: '
          'MNIST from $FLAXEN_DATA/mnist or the download cache; Fashion-MNIST from '
          '$FLAXEN_DATA/fashion-mnist or /usr/share/datasets/fashion-mnist.'))

flags.DEFINE_string(
    'output_dir', default='/tmp/flaxen_mnist',
    help=('Where checkpoints, TensorBoard events, metrics.jsonl and the plot go.'))

flags.DEFINE_bool(
    'resume', default=False,
    help=('Continue the run in --output_dir from its last checkpoint (same configuration; '
          'otherwise an error). Without it, a run starts afresh and replaces that run.'))

flags.DEFINE_integer(
    'num_train_examples', default=0,
    help=('Use only the first N training examples (0: all); for quick runs.'))

flags.DEFINE_integer(
    'num_devices', default=0,
    help=('Train data-parallel over this many local devices (0: all of them). With several '
          'processes, every device of every process is used.'))

flags.DEFINE_integer(
    'seed', default=0,
    help=('Seed of the parameter initialisation and of the input shuffling.'))

flags.DEFINE_bool(
    'progress', default=True,
    help=('Show a progress bar per epoch (process 0 only).'))

flags.DEFINE_string(
    'coordinator_address', default=None,
    help=('Several processes: HOST:PORT of process 0, the same on every process. Give it '
          'with --num_processes and --process_id, or none of the three (one process, or a '
          'launcher such as SLURM that JAX detects).'))

flags.DEFINE_integer(
    'num_processes', default=None,
    help=('Several processes: how many take part (see --coordinator_address).'))

flags.DEFINE_integer(
    'process_id', default=None,
    help=('Several processes: this one, 0..num_processes-1 (see --coordinator_address).'))


if __name__ == '__main__':
    app.run(main, flags_parser=extras.parse_flags)
