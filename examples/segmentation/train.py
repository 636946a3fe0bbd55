"""Semantic segmentation example: a U-Net labels every pixel of Fashion-MNIST canvases.

Each 64x64 canvas holds 1 to 4 Fashion-MNIST (or MNIST) images at random positions; the model
gives every pixel one of 11 classes (background or the class of the image covering it; see
input_pipeline.py). The canvases are generated once and cached.

    python examples/segmentation/train.py                      # Fashion-MNIST, see README
    python examples/segmentation/train.py --num_epochs=1 --num_train_canvases=2000   # quick

Everything in --output_dir: checkpoints/ (one per epoch), tensorboard/ (event files),
metrics.jsonl, config.json, learning_curves.png and predictions.png. --resume continues from the
last checkpoint with the same result as an uninterrupted run (and refuses a changed
configuration). Several processes: --coordinator_address=HOST:PORT --num_processes=N
--process_id=I on each; every process feeds its part of every batch, process 0 writes the files.
"""

from __future__ import annotations

import functools
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

from flaxen import metrics, optim, parallel
from flaxen.errors import FlaxenError
from flaxen.optim import schedules
from flaxen.training import checkpoints

try:  # as part of the repository's `examples` package (tests, `python -m ...`)
    from examples import config as config_lib
    from examples.segmentation import input_pipeline, models, plots
except ImportError:  # as a script, `python examples/segmentation/train.py`, or a forked copy
    sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import config as config_lib  # type: ignore[no-redef]  # examples/config.py
    import input_pipeline  # type: ignore[no-redef]
    import models  # type: ignore[no-redef]
    import plots  # type: ignore[no-redef]

FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a script, so that tests can import several examples'
    train.py files into one process without clashing flag names."""
    flags.DEFINE_float('learning_rate', 8e-3,
                       'Peak Adam learning rate: reached after --warmup_epochs, then it decays '
                       'to 0 along a half cosine by the last step.')
    flags.DEFINE_float('warmup_epochs', 0.4,
                       'Epochs (a fraction is fine) of linear warm-up of the learning rate from '
                       '0 (0: none).')
    flags.DEFINE_integer('batch_size', 16, 'Canvases per training step (all processes together).')
    flags.DEFINE_integer('num_epochs', 4, 'Number of training epochs.')
    flags.DEFINE_enum('dataset', 'fashion_mnist', ['fashion_mnist', 'mnist'],
                      'Which images fill the canvases (the default folder and the class names).')
    flags.DEFINE_string('data_dir', None,
                        'Folder with the four IDX files. Default: $FLAXEN_DATA/fashion-mnist (or '
                        '/mnist) if it exists, else /usr/share/datasets/fashion-mnist.')
    flags.DEFINE_string('cache_dir', None,
                        'Where generated canvases are cached (default $FLAXEN_DATA_CACHE/'
                        'segmentation or ~/.cache/flaxen/datasets/segmentation).')
    flags.DEFINE_integer('num_train_canvases', 64000, 'Training canvases (from training images).')
    flags.DEFINE_integer('num_test_canvases', 2000, 'Test canvases (from test images).')
    flags.DEFINE_integer('data_seed', 0, 'Seed of the canvas generator.')
    flags.DEFINE_string('output_dir', '/tmp/flaxen_segmentation',
                        'Where checkpoints, TensorBoard events, metrics.jsonl and the plots go.')
    flags.DEFINE_bool('resume', False, 'Continue from the last checkpoint in --output_dir.')
    flags.DEFINE_integer('num_devices', 0,
                         'Train data-parallel over this many local devices (0: all of them).')
    flags.DEFINE_integer('cpu_devices', CPU_DEVICES,
                         'Where JAX computes on the CPU: split every step over this many XLA CPU '
                         'devices (data parallel), which keeps more cores busy than one device '
                         'does (see the README). Not used when XLA_FLAGS sets '
                         '--xla_force_host_platform_device_count; 1: one device.')
    flags.DEFINE_integer('seed', 0, 'Seed of the parameter initialisation and of the shuffling.')
    flags.DEFINE_bool('progress', True, 'Show a progress bar per epoch.')
    flags.DEFINE_string('coordinator_address', None,
                        'HOST:PORT of process 0, for a run over several processes.')
    flags.DEFINE_integer('num_processes', None, 'Number of processes (with --coordinator_address).')
    flags.DEFINE_integer('process_id', None, 'This process, 0..N-1 (with --coordinator_address).')


# XLA runs one CPU device's step with about one core at work (a profile on the README's
# 2-core machine: 1.1 cores' worth of operations); four devices, each a quarter of the batch,
# ran a step 1.5 times as fast.
CPU_DEVICES = 4
EVAL_BATCH_SIZE = 200
LOG_EVERY = 10  # steps per training-loss row in metrics.jsonl and TensorBoard
NUM_CLASSES = input_pipeline.NUM_CLASSES
# The flags that define a run: --resume refuses to continue when one of them changed.
RUN_KEYS = ('learning_rate', 'warmup_epochs', 'batch_size', 'num_epochs', 'dataset',
            'num_train_canvases', 'num_test_canvases', 'data_seed', 'seed')


class ConfigError(FlaxenError):
    """A flag combination that cannot work (printed as one ``Error:`` line)."""


@jax.jit  # one compiled program instead of many small eager initialisers
def create_model(key):
    _, model = models.UNet.create_by_shape(key, [((1, 64, 64, 1), jnp.float32)])
    return model


def create_optimizer(model, learning_rate):
    return optim.Adam(learning_rate=learning_rate).create(model)


@functools.lru_cache(maxsize=16)  # the same function for the same run: one compiled step
def create_learning_rate_fn(base_learning_rate, steps_per_epoch, num_epochs,
                            warmup_epochs=0.0):
    """Linear warm-up from 0 to ``base_learning_rate`` over ``warmup_epochs`` (rounded to
    whole steps), then a half cosine to 0 at the last step
    (``optax.warmup_cosine_decay_schedule``)."""
    if not 0 <= warmup_epochs < num_epochs:
        raise ConfigError(f'--warmup_epochs={warmup_epochs}: expected a number of epochs in '
                          f'[0, {num_epochs}) (--num_epochs={num_epochs}).')
    total_steps = steps_per_epoch * num_epochs
    warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), total_steps - 1)
    return schedules.warmup_cosine(base_learning_rate, warmup_steps, total_steps)


def to_float(images):
    """uint8 ``(n, 64, 64)`` canvases to the model's float32 ``(n, 64, 64, 1)`` in [0, 1]."""
    return (images.astype(jnp.float32) / 255.0)[..., None]


def cross_entropy_loss(logits, labels):
    """Mean over all pixels of ``-log softmax(logits)[label]``; logits ``(n, h, w, 11)``."""
    log_probs = jax.nn.log_softmax(logits)
    onehot = jax.nn.one_hot(labels, NUM_CLASSES, dtype=log_probs.dtype)
    return -jnp.mean(jnp.sum(onehot * log_probs, axis=-1))


@functools.partial(jax.jit, static_argnums=(2,))
def train_step(optimizer, batch, learning_rate_fn):
    """One Adam step on a batch ``{'image': uint8 (n, 64, 64), 'label': uint8 (n, 64, 64)}``,
    at the learning rate ``learning_rate_fn(step)``."""
    images, labels = to_float(batch['image']), batch['label'].astype(jnp.int32)

    def loss_fn(model):
        logits = model(images)
        return cross_entropy_loss(logits, labels), logits

    lr = learning_rate_fn(optimizer.state.step)
    optimizer, loss, logits = optimizer.optimize(loss_fn, learning_rate=lr)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return optimizer, {'loss': loss, 'pixel_accuracy': accuracy, 'learning_rate': lr}


@jax.jit
def eval_step(model, batch):
    """Sums over a batch (rows with ``mask == 0`` are padding): the loss summed over pixels,
    the pixel count and the ``(11, 11)`` confusion matrix (rows: true class, columns: predicted).
    """
    logits = model(to_float(batch['image']))
    labels = batch['label'].astype(jnp.int32)
    mask = batch['mask'][:, None, None].astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits)
    true = jax.nn.one_hot(labels, NUM_CLASSES, dtype=jnp.float32) * mask[..., None]
    pred = jax.nn.one_hot(jnp.argmax(logits, -1), NUM_CLASSES, dtype=jnp.float32)
    return {'loss': -jnp.sum(true * log_probs),
            'count': jnp.sum(mask) * labels.shape[1] * labels.shape[2],
            'confusion': jnp.einsum('nhwi,nhwj->ij', true, pred)}


def iou_from_confusion(confusion):
    """Per-class intersection over union ``C[k,k] / (row_k + column_k - C[k,k])``, over the
    whole test set; NaN for a class that is neither present nor predicted."""
    confusion = onp.asarray(confusion, onp.float64)
    inter = onp.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    with onp.errstate(invalid='ignore', divide='ignore'):
        return inter / union


def make_mesh(num_devices):
    """The mesh of all devices of all processes; in one process, of the first ``num_devices``
    local devices (None for one device)."""
    if jax.process_count() > 1:
        if num_devices:
            raise ConfigError('--num_devices is for one process; with several processes every '
                              'device of every process is used. Leave it at 0.')
        return parallel.default_mesh()
    available = jax.local_device_count()
    n = num_devices or available
    if not 1 <= n <= available:
        raise ConfigError(f'--num_devices={num_devices}: expected 0 (all) or 1..{available} '
                          f'(the local devices), got {n}.')
    if n == 1:
        return None
    return jax.sharding.Mesh(onp.array(jax.local_devices()[:n]), (parallel.BATCH_AXIS,))


def put_batch(batch, mesh):
    """This process's rows of a global batch, sharded over the mesh (unchanged without one)."""
    if mesh is None:
        return batch
    if jax.process_count() > 1:
        n = len(next(iter(batch.values()))) // jax.process_count()
        start = jax.process_index() * n
        batch = {k: v[start:start + n] for k, v in batch.items()}
    return parallel.shard_batch(batch, mesh)


def train_epoch(optimizer, train_ds, batch_size, epoch, rng, learning_rate_fn, mesh=None,
                progress=False, log_fn=None):
    """Trains for one epoch; ``log_fn(step, mean_loss)`` every ``LOG_EVERY`` steps."""
    steps_per_epoch = len(train_ds['image']) // batch_size
    perms = rng.permutation(len(train_ds['image']))
    perms = perms[:steps_per_epoch * batch_size].reshape((steps_per_epoch, batch_size))
    batch_metrics = []
    bar = tqdm(perms, desc=f'epoch {epoch}', unit='step', disable=not progress, leave=True)
    for i, perm in enumerate(bar, 1):
        batch = {k: v[perm] for k, v in train_ds.items()}  # every process builds the indices
        optimizer, step_metrics = train_step(optimizer, put_batch(batch, mesh),
                                             learning_rate_fn)
        batch_metrics.append(step_metrics)
        if i % LOG_EVERY == 0 or i == steps_per_epoch:
            recent = onp.mean(jax.device_get([m['loss'] for m in batch_metrics[-LOG_EVERY:]]))
            bar.set_postfix(loss=f'{recent:.4f}')
            if log_fn is not None and i % LOG_EVERY == 0:
                log_fn((epoch - 1) * steps_per_epoch + i, float(recent))
    batch_metrics_np = jax.device_get(batch_metrics)
    epoch_metrics = {k: float(onp.mean([m[k] for m in batch_metrics_np]))
                     for k in batch_metrics_np[0]}
    logging.info('train epoch: %d, loss: %.4f, pixel accuracy: %.2f', epoch,
                 epoch_metrics['loss'], epoch_metrics['pixel_accuracy'] * 100)
    return optimizer, epoch_metrics


def eval_model(model, test_ds, mesh=None):
    """Loss, pixel accuracy, per-class IoU and mean IoU over the whole test set.

    Returns:
      ``{'loss', 'pixel_accuracy', 'mean_iou'}`` floats and ``'iou'``: float64 ``(11,)``.
    """
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
    confusion = sum(onp.asarray(s['confusion'], onp.float64) for s in sums)
    count = sum(float(s['count']) for s in sums)
    iou = iou_from_confusion(confusion)
    return {'loss': sum(float(s['loss']) for s in sums) / count,
            'pixel_accuracy': float(onp.trace(confusion) / count),
            'mean_iou': float(onp.nanmean(iou)), 'iou': iou}


def restore_history(path, last_step):
    """The metrics rows up to ``last_step`` (the restored checkpoint's step); the file is
    rewritten without later rows, which an interrupted run may have left."""
    rows = metrics.read_jsonl(path) if os.path.exists(path) else []
    history = [r for r in rows if r['step'] <= last_step]
    with open(path, 'w', encoding='utf-8') as f:
        for row in history:
            f.write(json.dumps(row) + '\n')
    return history


def check_config(cfg, path):
    """With --resume, refuses a run whose defining flags differ from the saved config.json."""
    run = {k: getattr(cfg, k) for k in RUN_KEYS}
    if cfg.resume and os.path.exists(path):
        with open(path, encoding='utf-8') as f:
            saved = json.load(f)
        changed = {k: (saved.get(k), v) for k, v in run.items() if saved.get(k) != v}
        if changed:
            what = ', '.join(f'--{k}={new!r} (the run has {old!r})'
                             for k, (old, new) in changed.items())
            raise ConfigError(f'--resume: {cfg.output_dir} holds a run of another '
                              f'configuration: {what}. Use the same flags, or another '
                              '--output_dir, or drop --resume to start afresh.')
    return run


class Writers:
    """metrics.jsonl and TensorBoard; on processes other than 0 they write nothing."""

    def __init__(self, out, enabled):
        self.enabled = enabled
        if enabled:
            self.jsonl = metrics.JsonlWriter(os.path.join(out, 'metrics.jsonl'))
            self.tb = metrics.SummaryWriter(os.path.join(out, 'tensorboard'))

    def write(self, step, row):
        if self.enabled:
            self.jsonl.write(step, row)
            for k, v in row.items():
                if k == 'test_iou':
                    for i, x in enumerate(v):
                        self.tb.scalar(f'test_iou/{i:02d}', x, step)
                elif k != 'epoch':
                    self.tb.scalar(k, v, step)

    def close(self):
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


def train(train_ds, test_ds, cfg=None):
    """Trains the U-Net; returns the final optimizer (replicated over the mesh if any)."""
    cfg = cfg or FLAGS
    batch_size = cfg.batch_size
    mesh = make_mesh(cfg.num_devices)
    if mesh is not None and batch_size % mesh.size:
        raise ConfigError(f'--batch_size={batch_size} must be divisible by the number of '
                          f'devices ({mesh.size}); pass another --batch_size, --num_devices or '
                          '--cpu_devices.')
    steps_per_epoch = len(train_ds['image']) // batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f'--batch_size={batch_size} is larger than the training set '
                          f'({len(train_ds["image"])} canvases).')
    writer = jax.process_index() == 0
    out = cfg.output_dir
    os.makedirs(out, exist_ok=True)
    config_path = os.path.join(out, 'config.json')
    run = check_config(cfg, config_path)

    model = create_model(random.PRNGKey(cfg.seed))
    optimizer = create_optimizer(model, cfg.learning_rate)
    learning_rate_fn = create_learning_rate_fn(cfg.learning_rate, steps_per_epoch,
                                               cfg.num_epochs, cfg.warmup_epochs)
    ckpt_dir = os.path.join(out, 'checkpoints')
    if cfg.resume:
        optimizer = checkpoints.restore_checkpoint(ckpt_dir, optimizer)
    last_step = int(optimizer.state.step)
    first_epoch = last_step // steps_per_epoch + 1
    history = []
    if writer:
        if first_epoch > 1:
            logging.info('Resuming after epoch %d from %s', first_epoch - 1, ckpt_dir)
        else:  # a fresh start: earlier event files would mix with this run's curves
            for path in glob.glob(os.path.join(out, 'tensorboard', 'events.out.tfevents.*')):
                os.remove(path)
        with open(config_path, 'w', encoding='utf-8') as f:
            json.dump(run, f, indent=1)
        history = restore_history(os.path.join(out, 'metrics.jsonl'), last_step)
    writers = Writers(out, writer)
    if mesh is not None:
        logging.info('Data-parallel over %d devices (%d processes).', mesh.size,
                     jax.process_count())
        optimizer = optimizer.replicate(mesh)

    def log_train(step, loss):
        writers.write(step, {'train_loss': loss})
        history.append({'step': step, 'train_loss': loss})

    try:
        for epoch in range(first_epoch, cfg.num_epochs + 1):
            # The shuffling depends on (seed, epoch) only, so a resumed run sees the same batches.
            input_rng = onp.random.RandomState([cfg.seed, epoch])
            epoch_start = time.time()
            optimizer, train_metrics = train_epoch(
                optimizer, train_ds, batch_size, epoch, input_rng, learning_rate_fn, mesh,
                cfg.progress and writer, log_train)
            train_seconds = time.time() - epoch_start
            test = eval_model(optimizer.target, test_ds, mesh)
            logging.info('eval epoch: %d, loss: %.4f, pixel accuracy: %.2f, mean IoU: %.4f',
                         epoch, test['loss'], test['pixel_accuracy'] * 100, test['mean_iou'])
            epoch_seconds = time.time() - epoch_start  # training and evaluation
            host_optimizer = optimizer if mesh is None else optimizer.unreplicate()
            checkpoints.save_checkpoint(ckpt_dir, host_optimizer, epoch, keep=3, overwrite=True)
            row = {'epoch': epoch, 'train_loss': train_metrics['loss'],
                   'train_pixel_accuracy': train_metrics['pixel_accuracy'],
                   'test_loss': test['loss'], 'test_pixel_accuracy': test['pixel_accuracy'],
                   'test_mean_iou': test['mean_iou'], 'test_iou': test['iou'].tolist(),
                   'train_seconds': train_seconds, 'epoch_seconds': epoch_seconds}
            writers.write(epoch * steps_per_epoch, row)
            history.append({'step': epoch * steps_per_epoch, **row})
    finally:  # an interrupted run leaves complete files
        writers.close()
    if writer and history:
        names = input_pipeline.class_names(cfg.dataset)
        final = [r for r in history if 'epoch' in r][-1]
        logging.info('Per-class IoU after epoch %d:\n%s', final['epoch'],
                     '\n'.join(f'  {n:12s} {v:.4f}' for n, v in zip(names, final['test_iou'])))
        title = (f'U-Net on {cfg.dataset} canvases ({len(train_ds["image"])} train, '
                 f'{len(test_ds["image"])} test)')
        plots.learning_curves(history, steps_per_epoch,
                              os.path.join(out, 'learning_curves.png'), title)
        host_model = (optimizer if mesh is None else optimizer.unreplicate()).target
        plots.predictions(host_model, test_ds, names, os.path.join(out, 'predictions.png'))
    return optimizer


def config_from_flags():
    return SimpleNamespace(**{name: FLAGS[name].value for name in (
        'learning_rate', 'warmup_epochs', 'batch_size', 'num_epochs', 'dataset', 'data_dir',
        'cache_dir', 'num_train_canvases', 'num_test_canvases', 'data_seed', 'output_dir', 'resume',
        'num_devices', 'seed', 'progress')})


def use_cpu_devices(n):
    """Asks JAX for ``n`` CPU devices; it must run before anything touches the devices.

    Leaves the count alone when ``XLA_FLAGS`` names one (the README's and the tests' way of
    simulating several devices). On a GPU or TPU the CPU devices are not the ones trained on,
    so the setting changes nothing there.
    """
    if n < 1:
        raise ConfigError(f'--cpu_devices={n}: expected 1 or more.')
    if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
        jax.config.update('jax_num_cpu_devices', n)


def init_distributed():
    """``jax.distributed.initialize`` when --coordinator_address is given, before anything
    touches the devices."""
    given = [FLAGS[k].value is not None
             for k in ('coordinator_address', 'num_processes', 'process_id')]
    if not any(given):
        return
    if not all(given):
        raise ConfigError('--coordinator_address, --num_processes and --process_id go '
                          'together: pass all three (or none for one process).')
    if not 0 <= FLAGS.process_id < FLAGS.num_processes:
        raise ConfigError(f'--process_id={FLAGS.process_id}: expected 0..'
                          f'{FLAGS.num_processes - 1} (--num_processes={FLAGS.num_processes}).')
    jax.distributed.initialize(FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    try:
        config_lib.apply_config()  # --config file and --config.x.y overrides -> the flags
        use_cpu_devices(FLAGS.cpu_devices)
        init_distributed()
        cfg = config_from_flags()
        train_ds, test_ds = input_pipeline.get_datasets(
            cfg.dataset, cfg.data_dir, cfg.num_train_canvases, cfg.num_test_canvases,
            cfg.data_seed, cache_dir=cfg.cache_dir, write_cache=jax.process_index() == 0)
        logging.info('%d train and %d test canvases of %s; output in %s',
                     len(train_ds['image']), len(test_ds['image']), cfg.dataset, cfg.output_dir)
        train(train_ds, test_ds, cfg)
    except FlaxenError as e:  # a clear message (also config_lib.ConfigFlagError), no traceback
        print(f'Error: {e}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=config_lib.flags_parser(__file__))  # adds --config
