"""MNIST example.

This script trains a simple Convolutional Neural Net on MNIST (or Fashion-MNIST). The data is
read from the standard IDX files with NumPy (see input_pipeline.py); no TensorFlow needed.

    python examples/mnist/train.py                                # MNIST, or see README
    python examples/mnist/train.py --dataset=fashion_mnist \
        --data_dir=/usr/share/datasets/fashion-mnist --output_dir=/tmp/mnist

Everything in --output_dir: checkpoints/ (one per epoch), tensorboard/ (event files),
metrics.jsonl (one line per epoch) and learning_curves.png. --resume continues from the last
checkpoint with the same result as an uninterrupted run.
"""

from __future__ import annotations

import glob
import json
import os
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as onp
from absl import app, flags, logging
from jax import random
from tqdm import tqdm

from flaxen import metrics, optim, parallel
from flaxen.training import checkpoints

try:  # as part of the repository's `examples` package (tests, `python -m examples.mnist.train`)
    from examples.mnist import input_pipeline, models
except ImportError:  # as a script, `python examples/mnist/train.py`, or in a forked copy
    import input_pipeline
    import models

FLAGS = flags.FLAGS

flags.DEFINE_float(
    'learning_rate', default=0.1,
    help=('The learning rate for the momentum optimizer.'))

flags.DEFINE_float(
    'momentum', default=0.9,
    help=('The decay rate used for the momentum optimizer.'))

flags.DEFINE_integer(
    'batch_size', default=128,
    help=('Batch size for training.'))

flags.DEFINE_integer(
    'num_epochs', default=10,
    help=('Number of training epochs.'))

flags.DEFINE_enum(
    'dataset', default='mnist', enum_values=['mnist', 'fashion_mnist', 'idx'],
    help=('mnist (downloaded once, then cached), fashion_mnist, or idx (any four IDX files '
          'in --data_dir, no checksums). If --dataset is not given and MNIST can be neither '
          'found nor downloaded, the locally installed Fashion-MNIST is used, with a warning.'))

flags.DEFINE_string(
    'data_dir', default=None,
    help=('A folder with the four IDX files (gzip or not); no download then.'))

flags.DEFINE_string(
    'output_dir', default='/tmp/flaxen_mnist',
    help=('Where checkpoints, TensorBoard events, metrics.jsonl and the plot go.'))

flags.DEFINE_bool(
    'resume', default=False,
    help=('Continue from the last checkpoint in --output_dir (otherwise start afresh).'))

flags.DEFINE_integer(
    'num_train_examples', default=0,
    help=('Use only the first N training examples (0: all); for quick runs.'))

flags.DEFINE_integer(
    'num_devices', default=0,
    help=('Train data-parallel over this many local devices (0: all of them).'))

flags.DEFINE_integer(
    'seed', default=0,
    help=('Seed of the parameter initialisation and of the input shuffling.'))

flags.DEFINE_bool(
    'progress', default=True,
    help=('Show a progress bar per epoch.'))

EVAL_BATCH_SIZE = 1000


@jax.jit  # one compiled program instead of many small eager initialisers
def create_model(key):
  _, model = models.CNN.create_by_shape(key, [((1, 28, 28, 1), jnp.float32)])
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


def make_mesh(num_devices):
  """A one-axis mesh over the first ``num_devices`` local devices, or None for one device."""
  available = jax.local_device_count()
  n = num_devices or available
  if not 1 <= n <= available:
    raise ValueError(f'--num_devices={num_devices}: expected 0 (all) or 1..{available} '
                     f'(the local devices), got {n}.')
  if n == 1:
    return None
  return jax.sharding.Mesh(onp.array(jax.local_devices()[:n]), (parallel.BATCH_AXIS,))


def put_batch(batch, mesh):
  return batch if mesh is None else parallel.shard_batch(batch, mesh)


def train_epoch(optimizer, train_ds, batch_size, epoch, rng, mesh=None, progress=False):
  """Train for a single epoch."""
  train_ds_size = len(train_ds['image'])
  steps_per_epoch = train_ds_size // batch_size

  perms = rng.permutation(len(train_ds['image']))
  perms = perms[:steps_per_epoch * batch_size]  # skip incomplete batch
  perms = perms.reshape((steps_per_epoch, batch_size))
  batch_metrics = []
  bar = tqdm(perms, desc=f'epoch {epoch}', unit='step', disable=not progress, leave=True)
  for step, perm in enumerate(bar, 1):
    batch = {k: v[perm] for k, v in train_ds.items()}
    optimizer, metrics = train_step(optimizer, put_batch(batch, mesh))
    batch_metrics.append(metrics)
    if progress and (step % 20 == 0 or step == steps_per_epoch):
      running = onp.mean(jax.device_get([m['loss'] for m in batch_metrics]))
      bar.set_postfix(loss=f'{running:.4f}')

  # compute mean of metrics across each batch in epoch.
  batch_metrics_np = jax.device_get(batch_metrics)
  epoch_metrics_np = {
      k: onp.mean([metrics[k] for metrics in batch_metrics_np])
      for k in batch_metrics_np[0]}

  logging.info('train epoch: %d, loss: %.4f, accuracy: %.2f', epoch,
               epoch_metrics_np['loss'], epoch_metrics_np['accuracy'] * 100)

  return optimizer, epoch_metrics_np


def eval_model(model, test_ds, mesh=None):
  """Mean loss and accuracy over the whole test set, in padded batches of EVAL_BATCH_SIZE."""
  n = len(test_ds['image'])
  size = min(EVAL_BATCH_SIZE, n)
  if mesh is not None:
    size = -(-size // mesh.size) * mesh.size  # a multiple of the number of devices
  total = -(-n // size) * size
  padded = {k: onp.concatenate([v, onp.zeros((total - n,) + v.shape[1:], v.dtype)])
            for k, v in test_ds.items()}
  padded['mask'] = (onp.arange(total) < n).astype(onp.float32)
  sums = [eval_step(model, put_batch({k: v[i:i + size] for k, v in padded.items()}, mesh))
          for i in range(0, total, size)]
  sums = jax.device_get(sums)
  summary = {k: float(sum(s[k] for s in sums)) for k in sums[0]}
  return summary['loss'] / summary['count'], summary['accuracy'] / summary['count']


def get_datasets(cfg=None):
  """Load the train and test datasets into memory: (train_ds, test_ds, dataset name)."""
  cfg = cfg or FLAGS
  allow_fallback = not (FLAGS.is_parsed() and FLAGS['dataset'].present) and not cfg.data_dir
  return input_pipeline.get_datasets(
      cfg.dataset, cfg.data_dir, num_train_examples=cfg.num_train_examples or None,
      allow_fallback=allow_fallback)


def restore_history(path, last_epoch):
  """The metrics rows of epochs 1..last_epoch (a resumed run rewrites the file without later
  rows, which a run interrupted after its last checkpoint may have left)."""
  rows = metrics.read_jsonl(path) if os.path.exists(path) else []
  by_epoch = {r['step']: r for r in rows if r['step'] <= last_epoch}
  history = [by_epoch[e] for e in sorted(by_epoch)]
  with open(path, 'w', encoding='utf-8') as f:
    for row in history:
      f.write(json.dumps(row) + '\n')
  return history


def plot_learning_curves(history, path, title=''):
  """A PNG of train/test loss and accuracy per epoch (matplotlib, Agg backend)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  epochs = [r['step'] for r in history]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key in zip(axes, ('loss', 'accuracy')):
    ax.plot(epochs, [r['train_' + key] for r in history], 'o-', label='train')
    ax.plot(epochs, [r['test_' + key] for r in history], 's-', label='test')
    ax.set_xlabel('epoch')
    ax.set_ylabel(key)
    ax.grid(True, alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def train(train_ds, test_ds, cfg=None):
  """Train MNIST to completion."""
  cfg = cfg or FLAGS
  rng = random.PRNGKey(cfg.seed)

  batch_size = cfg.batch_size
  num_epochs = cfg.num_epochs
  mesh = make_mesh(cfg.num_devices)
  if mesh is not None and batch_size % mesh.size:
    raise ValueError(f'--batch_size={batch_size} must be divisible by the number of devices '
                     f'({mesh.size}); pass another --batch_size or --num_devices.')
  steps_per_epoch = len(train_ds['image']) // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'--batch_size={batch_size} is larger than the training set '
                     f'({len(train_ds["image"])} examples).')

  model = create_model(rng)
  optimizer = create_optimizer(model, cfg.learning_rate, cfg.momentum)

  out = cfg.output_dir
  os.makedirs(out, exist_ok=True)
  ckpt_dir = os.path.join(out, 'checkpoints')
  if cfg.resume:
    optimizer = checkpoints.restore_checkpoint(ckpt_dir, optimizer)
  first_epoch = int(optimizer.state.step) // steps_per_epoch + 1
  if first_epoch > 1:
    logging.info('Resuming after epoch %d from %s', first_epoch - 1, ckpt_dir)
  else:  # a fresh start: earlier event files would mix with this run's curves
    for path in glob.glob(os.path.join(out, 'tensorboard', 'events.out.tfevents.*')):
      os.remove(path)
  history = restore_history(os.path.join(out, 'metrics.jsonl'), first_epoch - 1)
  jsonl = metrics.JsonlWriter(os.path.join(out, 'metrics.jsonl'))
  summary_writer = metrics.SummaryWriter(os.path.join(out, 'tensorboard'))
  if mesh is not None:
    logging.info('Data-parallel over %d devices.', mesh.size)
    optimizer = optimizer.replicate(mesh)

  for epoch in range(first_epoch, num_epochs + 1):
    # The shuffling depends on (seed, epoch) only, so a resumed run sees the same batches.
    input_rng = onp.random.RandomState([cfg.seed, epoch])
    epoch_start = time.time()
    optimizer, train_metrics = train_epoch(
        optimizer, train_ds, batch_size, epoch, input_rng, mesh, cfg.progress)
    loss, accuracy = eval_model(optimizer.target, test_ds, mesh)
    logging.info('eval epoch: %d, loss: %.4f, accuracy: %.2f',
                 epoch, loss, accuracy * 100)
    epoch_seconds = time.time() - epoch_start  # training and evaluation
    host_optimizer = optimizer if mesh is None else optimizer.unreplicate()
    checkpoints.save_checkpoint(ckpt_dir, host_optimizer, epoch, keep=3, overwrite=True)
    row = {'train_loss': train_metrics['loss'], 'train_accuracy': train_metrics['accuracy'],
           'test_loss': loss, 'test_accuracy': accuracy}
    jsonl.write(epoch, {**row, 'epoch_seconds': epoch_seconds})
    for k, v in row.items():
      summary_writer.scalar(k, v, epoch)
    history.append({'step': epoch, **{k: float(v) for k, v in row.items()}})
  jsonl.close()
  summary_writer.close()
  if history:
    plot_learning_curves(history, os.path.join(out, 'learning_curves.png'),
                         getattr(cfg, 'dataset', ''))
  return optimizer


def config_from_flags():
  return SimpleNamespace(**{name: FLAGS[name].value for name in (
      'learning_rate', 'momentum', 'batch_size', 'num_epochs', 'dataset', 'data_dir',
      'output_dir', 'resume', 'num_train_examples', 'num_devices', 'seed', 'progress')})


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cfg = config_from_flags()
  try:
    train_ds, test_ds, cfg.dataset = get_datasets(cfg)
  except input_pipeline.DataError as e:
    raise SystemExit(f'Error: {e}') from None  # a clear message, not a traceback
  logging.info('Dataset %s: %d train and %d test examples; output in %s', cfg.dataset,
               len(train_ds['image']), len(test_ds['image']), cfg.output_dir)
  train(train_ds, test_ds, cfg)


if __name__ == '__main__':
  app.run(main)
