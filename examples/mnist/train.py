"""MNIST example.

This script trains a simple Convolutional Neural Net on MNIST (or Fashion-MNIST). The data is
read from the standard IDX files with NumPy (see input_pipeline.py); no TensorFlow needed.

    python examples/mnist/train.py                                # MNIST, or see README
    python examples/mnist/train.py --dataset=fashion_mnist --output_dir=/tmp/mnist
    # two processes (run each line on its own host, or both here):
    python examples/mnist/train.py --coordinator_address=HOST0:1234 --num_processes=2 \
        --process_id=0                                            # and --process_id=1

Everything in --output_dir: checkpoints/ (one per epoch), tensorboard/ (event files),
metrics.jsonl (one line per epoch), config.json and learning_curves.png. --resume continues
from the last checkpoint with the same result as an uninterrupted run, on any number of
processes. With several processes, process 0 writes every file (checkpoints once), and each
process feeds its own rows of every global batch (see docs/multihost.md).
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as onp
from absl import app, flags, logging
from jax import random
from tqdm import tqdm

from flaxen import distributed, metrics, optim, parallel
from flaxen.errors import FlaxenError
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
    help=('Global batch size for training (all devices of all processes together); a '
          'multiple of the number of devices.'))

flags.DEFINE_integer(
    'num_epochs', default=10,
    help=('Number of training epochs (in total: a resumed run continues up to this many).'))

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


class UsageError(FlaxenError):
  """A flag value or a combination of flags this run cannot use."""


def make_mesh(num_devices):
  """A one-axis mesh over the devices to train on, or None for one device.

  One process: the first ``num_devices`` local devices (0: all). Several processes: every
  device of every process (``--num_devices`` must then be 0).
  """
  if jax.process_count() > 1:
    if num_devices:
      raise UsageError(f'--num_devices={num_devices} is for one process; with '
                       f'{jax.process_count()} processes every device of every process is '
                       'used. Leave --num_devices at 0.')
    return parallel.default_mesh()
  available = jax.local_device_count()
  n = num_devices or available
  if not 1 <= n <= available:
    raise UsageError(f'--num_devices={num_devices}: expected 0 (all) or 1..{available} '
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
  # Every process draws the same global batches and takes its own rows of each.
  perms = perms[:, distributed.local_rows(batch_size, mesh)]

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
  epoch_metrics_np['per_step'] = {  # for the per-step curves of short runs
      k: [float(m[k]) for m in batch_metrics_np] for k in batch_metrics_np[0]}

  logging.info('train epoch: %d, loss: %.4f, accuracy: %.2f', epoch,
               epoch_metrics_np['loss'], epoch_metrics_np['accuracy'] * 100)

  return optimizer, epoch_metrics_np


def eval_model(model, test_ds, mesh=None):
  """Mean loss and accuracy over the whole test set, in padded batches of EVAL_BATCH_SIZE.

  With several processes each evaluates its rows of every batch; every example is counted
  exactly once, and every process gets the same totals.
  """
  n = len(test_ds['image'])
  size = min(EVAL_BATCH_SIZE, n)
  if mesh is not None:
    size = -(-size // mesh.size) * mesh.size  # a multiple of the number of devices
  total = -(-n // size) * size
  padded = {k: onp.concatenate([v, onp.zeros((total - n,) + v.shape[1:], v.dtype)])
            for k, v in test_ds.items()}
  padded['mask'] = (onp.arange(total) < n).astype(onp.float32)
  rows = distributed.local_rows(size, mesh)
  sums = [eval_step(model, put_batch({k: v[i:i + size][rows] for k, v in padded.items()},
                                     mesh))
          for i in range(0, total, size)]
  sums = jax.device_get(sums)
  summary = {k: float(sum(s[k] for s in sums)) for k in sums[0]}
  return summary['loss'] / summary['count'], summary['accuracy'] / summary['count']


def get_datasets(cfg=None):
  """Load the train and test datasets into memory (an ``input_pipeline.Loaded``)."""
  cfg = cfg or FLAGS
  allow_fallback = not (FLAGS.is_parsed() and FLAGS['dataset'].present) and not cfg.data_dir
  return input_pipeline.load(
      cfg.dataset, cfg.data_dir, num_train_examples=cfg.num_train_examples or None,
      allow_fallback=allow_fallback)


# What a resumed run must share with the run it continues (the rest, e.g. --num_epochs,
# the number of devices or processes, may change).
RUN_CONFIG_KEYS = ('learning_rate', 'momentum', 'batch_size', 'dataset', 'num_train_examples',
                   'seed')


def check_run_config(path, cfg):
  """Writes ``config.json``, or on --resume checks that it describes the same run."""
  now = {k: getattr(cfg, k) for k in RUN_CONFIG_KEYS}
  if cfg.resume and os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
    diff = [f'--{k}: {saved.get(k)!r} -> {v!r}' for k, v in now.items() if saved.get(k) != v]
    if diff:
      raise UsageError(f'--resume: {path} describes another run ({"; ".join(diff)}). Resume '
                       'with the same flags, or use a new --output_dir.')
  if jax.process_index() == 0:
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
      json.dump(now, f, indent=1)
    os.replace(path + '.tmp', path)


def restore_history(path, last_epoch):
  """The metrics rows of epochs 1..last_epoch (a resumed run rewrites the file without later
  rows, which a run interrupted after its last checkpoint may have left). Only process 0
  keeps a history (it alone writes the file and the plot); the others get []."""
  if jax.process_index() != 0:
    return []
  rows = metrics.read_jsonl(path) if os.path.exists(path) else []
  by_epoch = {r['step']: r for r in rows if r['step'] <= last_epoch}
  history = [by_epoch[e] for e in sorted(by_epoch)]
  with open(path, 'w', encoding='utf-8') as f:
    for row in history:
      f.write(json.dumps(row) + '\n')
  return history


def plot_learning_curves(history, path, title=''):
  """A PNG of train/test loss and accuracy (matplotlib, Agg backend).

  Per epoch; a run of fewer than three epochs plots the training curves per step instead
  (x in epochs, so the test points sit at the end of each epoch).
  """
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  epochs = [r['step'] for r in history]
  per_step = len(history) < 3 and all('train_loss_per_step' in r for r in history)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key in zip(axes, ('loss', 'accuracy')):
    if per_step:
      xs, ys = [], []
      for r in history:
        values = r[f'train_{key}_per_step']
        xs += [r['step'] - 1 + (i + 1) / len(values) for i in range(len(values))]
        ys += values
      ax.plot(xs, ys, '-', lw=1, label='train (per step)')
    else:
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


def start_afresh(out):
  """Removes the files of an earlier run in ``out`` (process 0), so curves do not mix."""
  if jax.process_index() != 0:
    return
  for pattern in ('checkpoints/checkpoint_*', 'tensorboard/events.out.tfevents.*',
                  'metrics.jsonl', 'learning_curves.png'):
    for path in glob.glob(os.path.join(out, pattern)):
      logging.info('Starting afresh: removing %s (pass --resume to continue a run).', path)
      os.remove(path)


def train(train_ds, test_ds, cfg=None):
  """Train MNIST to completion."""
  cfg = cfg or FLAGS
  rng = random.PRNGKey(cfg.seed)

  batch_size = cfg.batch_size
  num_epochs = cfg.num_epochs
  mesh = make_mesh(cfg.num_devices)
  if mesh is not None and batch_size % mesh.size:
    raise UsageError(f'--batch_size={batch_size} must be divisible by the number of devices '
                     f'({mesh.size}); pass another --batch_size or --num_devices.')
  steps_per_epoch = len(train_ds['image']) // batch_size
  if steps_per_epoch == 0:
    raise UsageError(f'--batch_size={batch_size} is larger than the training set '
                     f'({len(train_ds["image"])} examples).')

  model = create_model(rng)
  optimizer = create_optimizer(model, cfg.learning_rate, cfg.momentum)

  out = cfg.output_dir
  os.makedirs(out, exist_ok=True)
  ckpt_dir = os.path.join(out, 'checkpoints')
  check_run_config(os.path.join(out, 'config.json'), cfg)
  if cfg.resume:
    optimizer = checkpoints.restore_checkpoint(ckpt_dir, optimizer)
  first_epoch = int(optimizer.state.step) // steps_per_epoch + 1
  if first_epoch > 1:
    logging.info('Resuming after epoch %d from %s', first_epoch - 1, ckpt_dir)
  if cfg.resume:  # a run killed after logging an epoch it did not save logs it again
    metrics.truncate_events(os.path.join(out, 'tensorboard'), first_epoch - 1)
  else:
    start_afresh(out)
  history = restore_history(os.path.join(out, 'metrics.jsonl'), first_epoch - 1)
  jsonl = metrics.JsonlWriter(os.path.join(out, 'metrics.jsonl'))
  summary_writer = metrics.SummaryWriter(os.path.join(out, 'tensorboard'))
  progress = cfg.progress and jax.process_index() == 0
  if mesh is not None:
    logging.info('Data-parallel over %d devices.', mesh.size)
    optimizer = optimizer.replicate(mesh)

  for epoch in range(first_epoch, num_epochs + 1):
    # The shuffling depends on (seed, epoch) only, so a resumed run sees the same batches.
    input_rng = onp.random.RandomState([cfg.seed, epoch])
    epoch_start = time.time()
    optimizer, train_metrics = train_epoch(
        optimizer, train_ds, batch_size, epoch, input_rng, mesh, progress)
    loss, accuracy = eval_model(optimizer.target, test_ds, mesh)
    logging.info('eval epoch: %d, loss: %.4f, accuracy: %.2f',
                 epoch, loss, accuracy * 100)
    epoch_seconds = time.time() - epoch_start  # training and evaluation
    row = {'train_loss': train_metrics['loss'], 'train_accuracy': train_metrics['accuracy'],
           'test_loss': loss, 'test_accuracy': accuracy}
    per_step = {f'train_{k}_per_step': v for k, v in train_metrics['per_step'].items()}
    # Metrics first, then the checkpoint: a checkpoint always has its metrics row (a row
    # without a checkpoint is dropped on --resume and written again).
    jsonl.write(epoch, {**row, 'epoch_seconds': epoch_seconds, **per_step})
    for k, v in row.items():
      summary_writer.scalar(k, v, epoch)
    history.append({'step': epoch, **{k: float(v) for k, v in row.items()}, **per_step})
    host_optimizer = optimizer if mesh is None else optimizer.unreplicate()
    checkpoints.save_checkpoint(ckpt_dir, host_optimizer, epoch, keep=3, overwrite=True)
  jsonl.close()
  summary_writer.close()
  if history and jax.process_index() == 0:
    name = {'mnist': 'MNIST', 'fashion_mnist': 'Fashion-MNIST'}.get(
        getattr(cfg, 'dataset', ''), 'IDX files')
    plot_learning_curves(history, os.path.join(out, 'learning_curves.png'),
                         f'CNN on {name}: learning curves')
  return optimizer


def config_from_flags():
  return SimpleNamespace(**{name: FLAGS[name].value for name in (
      'learning_rate', 'momentum', 'batch_size', 'num_epochs', 'dataset', 'data_dir',
      'output_dir', 'resume', 'num_train_examples', 'num_devices', 'seed', 'progress')})


def check_flags(cfg):
  for name in ('batch_size', 'num_epochs'):
    if getattr(cfg, name) < 1:
      raise UsageError(f'--{name}={getattr(cfg, name)}: expected a whole number >= 1.')
  if cfg.learning_rate <= 0:
    raise UsageError(f'--learning_rate={cfg.learning_rate}: expected a number > 0.')
  if cfg.num_train_examples < 0 or cfg.num_devices < 0:
    raise UsageError('--num_train_examples and --num_devices must be >= 0 (0: all).')


def summary_lines(loaded, cfg, seconds):
  """The end-of-run summary: data used (and why), final accuracy, time, output files."""
  out = os.path.abspath(cfg.output_dir)
  path = os.path.join(out, 'metrics.jsonl')
  rows = metrics.read_jsonl(path) if os.path.exists(path) else []
  last = rows[-1] if rows else {}
  lines = [f'Dataset: {loaded.name} from {loaded.folder} ({len(loaded.train["label"])} train, '
           f'{len(loaded.test["label"])} test examples)']
  if loaded.note:
    lines.append(f'  why not MNIST: {loaded.note}')
  if last:
    lines.append(f'Final test accuracy: {last["test_accuracy"]:.4f} after epoch '
                 f'{last["step"]} (test loss {last["test_loss"]:.4f})')
  lines.append(f'Time: {seconds:.1f} s on {jax.device_count()} device(s), '
               f'{jax.process_count()} process(es)')
  lines.append(f'Outputs in {out}:')
  for name, what in (('checkpoints', 'checkpoints (restore with --resume)'),
                     ('tensorboard', f'TensorBoard events (tensorboard --logdir {out})'),
                     ('metrics.jsonl', 'metrics, one JSON line per epoch'),
                     ('learning_curves.png', 'learning curves'),
                     ('config.json', 'the run configuration')):
    lines.append(f'  {os.path.join(out, name)}: {what}')
  return lines


def fail(message):
  """A user error: one ``Error:`` line on stderr and exit status 2, no traceback."""
  logging.flush()
  print(f'Error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {argv[1:]} (flags are spelled --name=value).')
  started = time.time()
  cfg = config_from_flags()
  try:
    # Before anything touches a device.
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if jax.process_index() != 0:  # errors and warnings only; process 0 logs the run
      logging.set_verbosity(logging.WARNING)
    check_flags(cfg)
    loaded = get_datasets(cfg)
    train_ds, test_ds, cfg.dataset = loaded.train, loaded.test, loaded.name
    logging.info('Dataset %s: %d train and %d test examples; output in %s', cfg.dataset,
                 len(train_ds['image']), len(test_ds['image']), cfg.output_dir)
    train(train_ds, test_ds, cfg)
  except (FlaxenError, OSError) as e:  # data, flags, resume, files: the user can fix these
    fail(e)
  if jax.process_index() == 0:
    print('\n'.join(summary_lines(loaded, cfg, time.time() - started)), flush=True)


def parse_flags(argv):
  """absl's flag parsing, with a bad flag reported as one ``Error:`` line and exit 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f'Error: {e} (see --helpfull)', file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
