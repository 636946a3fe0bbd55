"""What the MNIST example adds around the seed's program, kept out of train.py.

train.py holds the seed README's functions in the seed's order and words; everything a real
run needs beyond them lives here: several devices and processes (a mesh, sharded batches,
padded evaluation batches), the progress bar, the output folder (checkpoints, TensorBoard,
metrics.jsonl, config.json, the learning-curves plot), ``--resume``, flag checks, the
end-of-run summary and the one-line ``Error:`` for user errors.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
import time
from types import SimpleNamespace

import jax
import numpy as onp
from absl import logging
from tqdm import tqdm

from flaxen import distributed, metrics, parallel
from flaxen.errors import FlaxenError
from flaxen.training import checkpoints

try:  # examples/config.py: ml_collections config files, --config.x.y=value overrides
    from examples import config as config_lib
except ImportError:  # as a script, or in a forked copy of examples/
    sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import config as config_lib  # type: ignore[no-redef]

EVAL_BATCH_SIZE = 1000

# The settings of a run, all from flags (main) or from a test's SimpleNamespace.
CONFIG_KEYS = ('learning_rate', 'momentum', 'batch_size', 'num_epochs', 'dataset', 'data_dir',
               'output_dir', 'resume', 'num_train_examples', 'num_devices', 'seed', 'progress')

# What a resumed run must share with the run it continues (the rest, e.g. --num_epochs,
# the number of devices or processes, may change).
RUN_CONFIG_KEYS = ('learning_rate', 'momentum', 'batch_size', 'dataset', 'num_train_examples',
                   'seed')


class UsageError(FlaxenError):
    """A flag value or a combination of flags this run cannot use."""


# -- Devices and processes -------------------------------------------------------------------

def make_mesh(num_devices):
    """A one-axis mesh over the devices to train on, or None for one device.

    One process: the first ``num_devices`` local devices (0: all). Several processes: every
    device of every process (``--num_devices`` must then be 0).
    """
    if jax.process_count() > 1:
        if num_devices:
            raise UsageError(f'--num_devices={num_devices} is for one process; with '
                             f'{jax.process_count()} processes every device of every process '
                             'is used. Leave --num_devices at 0.')
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
    """The batch as is (one device), or split along the mesh's devices."""
    return batch if mesh is None else parallel.shard_batch(batch, mesh)


def eval_batches(test_ds, mesh=None):
    """The test set in equal batches of EVAL_BATCH_SIZE, the last one padded with ``mask == 0``.

    With several processes each gets its rows of every batch; every example is counted
    exactly once (``eval_step`` sums over ``mask``).
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
    for i in range(0, total, size):
        yield put_batch({k: v[i:i + size][rows] for k, v in padded.items()}, mesh)


def progress_bar(perms, epoch, batch_metrics, enabled):
    """Iterates over ``perms`` with a tqdm bar that shows the running mean of the loss.

    ``batch_metrics`` is the list the training loop appends each step's metrics to; it is
    read every 20 steps only, so the host does not wait for the device after every step.
    """
    bar = tqdm(perms, desc=f'epoch {epoch}', unit='step', disable=not enabled, leave=True)
    for step, perm in enumerate(bar, 1):
        yield perm
        if enabled and (step % 20 == 0 or step == len(perms)):
            running = onp.mean(jax.device_get([m['loss'] for m in batch_metrics]))
            bar.set_postfix(loss=f'{running:.4f}')


# -- The output folder: config, resume, metrics, checkpoints, plot ---------------------------

def check_run_config(path, cfg):
    """Writes ``config.json``, or on --resume checks that it describes the same run."""
    now = {k: getattr(cfg, k) for k in RUN_CONFIG_KEYS}
    if cfg.resume and os.path.exists(path):
        with open(path, encoding='utf-8') as f:
            saved = json.load(f)
        diff = [f'--{k}: {saved.get(k)!r} -> {v!r}' for k, v in now.items()
                if saved.get(k) != v]
        if diff:
            raise UsageError(f'--resume: {path} describes another run ({"; ".join(diff)}). '
                             'Resume with the same flags, or use a new --output_dir.')
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


def start_afresh(out):
    """Removes the files of an earlier run in ``out`` (process 0), so curves do not mix."""
    if jax.process_index() != 0:
        return
    for pattern in ('checkpoints/checkpoint_*', 'tensorboard/events.out.tfevents.*',
                    'metrics.jsonl', 'learning_curves.png'):
        for path in glob.glob(os.path.join(out, pattern)):
            logging.info('Starting afresh: removing %s (pass --resume to continue a run).', path)
            os.remove(path)


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


class Run:
    """The output folder and devices of one training run, around the seed's loop.

    ``Run(cfg, train_size)`` checks the batch size against the data and the devices;
    ``restore`` writes or checks ``config.json``, restores the last checkpoint on --resume and
    replicates the optimizer over the mesh; ``end_epoch`` writes an epoch's metrics (JSON
    lines, TensorBoard) and then its checkpoint; ``close`` draws the learning curves.
    """

    def __init__(self, cfg, train_size):
        self.cfg = cfg
        self.mesh = make_mesh(cfg.num_devices)
        if self.mesh is not None and cfg.batch_size % self.mesh.size:
            raise UsageError(f'--batch_size={cfg.batch_size} must be divisible by the number of '
                             f'devices ({self.mesh.size}); pass another --batch_size or '
                             '--num_devices.')
        self.steps_per_epoch = train_size // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise UsageError(f'--batch_size={cfg.batch_size} is larger than the training set '
                             f'({train_size} examples).')
        self.progress = cfg.progress and jax.process_index() == 0
        self.out = cfg.output_dir
        self.ckpt_dir = os.path.join(self.out, 'checkpoints')

    def restore(self, optimizer):
        """Returns ``(optimizer, first_epoch)``: restored on --resume, replicated on a mesh."""
        cfg, out = self.cfg, self.out
        os.makedirs(out, exist_ok=True)
        check_run_config(os.path.join(out, 'config.json'), cfg)
        if cfg.resume:
            optimizer = checkpoints.restore_checkpoint(self.ckpt_dir, optimizer)
        first_epoch = int(optimizer.state.step) // self.steps_per_epoch + 1
        if first_epoch > 1:
            logging.info('Resuming after epoch %d from %s', first_epoch - 1, self.ckpt_dir)
        if cfg.resume:  # a run killed after logging an epoch it did not save logs it again
            metrics.truncate_events(os.path.join(out, 'tensorboard'), first_epoch - 1)
        else:
            start_afresh(out)
        self.history = restore_history(os.path.join(out, 'metrics.jsonl'), first_epoch - 1)
        self.jsonl = metrics.JsonlWriter(os.path.join(out, 'metrics.jsonl'))
        self.summary_writer = metrics.SummaryWriter(os.path.join(out, 'tensorboard'))
        if self.mesh is not None:
            logging.info('Data-parallel over %d devices.', self.mesh.size)
            optimizer = optimizer.replicate(self.mesh)
        self.epoch_start = time.time()
        return optimizer, first_epoch

    def end_epoch(self, epoch, optimizer, train_metrics, **test_metrics):
        """Writes the epoch's metrics, then its checkpoint (so a checkpoint always has its
        metrics row; a row without a checkpoint is dropped on --resume and written again).

        ``train_metrics`` is what ``train_epoch`` returns; ``test_metrics`` are scalars named as
        they should appear in metrics.jsonl and TensorBoard (``test_loss=...``).
        """
        epoch_seconds = time.time() - self.epoch_start  # training and evaluation
        row = {'train_loss': train_metrics['loss'], 'train_accuracy': train_metrics['accuracy'],
               **test_metrics}
        per_step = {f'train_{k}_per_step': [float(m[k]) for m in train_metrics['per_step']]
                    for k in train_metrics['per_step'][0]}
        self.jsonl.write(epoch, {**row, 'epoch_seconds': epoch_seconds, **per_step})
        for k, v in row.items():
            self.summary_writer.scalar(k, v, epoch)
        self.history.append({'step': epoch, **{k: float(v) for k, v in row.items()},
                             **per_step})
        host_optimizer = optimizer if self.mesh is None else optimizer.unreplicate()
        checkpoints.save_checkpoint(self.ckpt_dir, host_optimizer, epoch, keep=3,
                                    overwrite=True)
        self.epoch_start = time.time()

    def close(self):
        self.jsonl.close()
        self.summary_writer.close()
        if self.history and jax.process_index() == 0:
            name = {'mnist': 'MNIST', 'fashion_mnist': 'Fashion-MNIST'}.get(
                getattr(self.cfg, 'dataset', ''), 'IDX files')
            plot_learning_curves(self.history, os.path.join(self.out, 'learning_curves.png'),
                                 f'CNN on {name}: learning curves')


# -- The command line -------------------------------------------------------------------------

def config_from_flags(flag_values):
    """The run's settings: the one place that reads the flags."""
    config_lib.apply_config(flag_values)  # --config file and overrides -> the flat flags
    cfg = SimpleNamespace(**{name: flag_values[name].value for name in CONFIG_KEYS})
    # Fall back to Fashion-MNIST only when the user asked for no dataset or folder.
    cfg.allow_fallback = not flag_values['dataset'].present and not cfg.data_dir
    return cfg


def check_flags(cfg):
    for name in ('batch_size', 'num_epochs'):
        if getattr(cfg, name) < 1:
            raise UsageError(f'--{name}={getattr(cfg, name)}: expected a whole number >= 1.')
    if cfg.learning_rate <= 0:
        raise UsageError(f'--learning_rate={cfg.learning_rate}: expected a number > 0.')
    if cfg.num_train_examples < 0 or cfg.num_devices < 0:
        raise UsageError('--num_train_examples and --num_devices must be >= 0 (0: all).')


def start(argv, flag_values):
    """Checks the command line, connects the processes; returns the run's settings."""
    if len(argv) > 1:
        raise UsageError(f'unexpected arguments: {argv[1:]} (flags are spelled --name=value).')
    cfg = config_from_flags(flag_values)
    # Before anything touches a device.
    distributed.initialize(flag_values.coordinator_address, flag_values.num_processes,
                           flag_values.process_id)
    if jax.process_index() != 0:  # errors and warnings only; process 0 logs the run
        logging.set_verbosity(logging.WARNING)
    check_flags(cfg)
    return cfg


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


@contextlib.contextmanager
def user_errors():
    """Data, flags, resume, files: errors the user can fix end the program with one line."""
    try:
        yield
    except (FlaxenError, OSError) as e:
        fail(e)


def parse_flags(argv):
    """absl's flag parsing (with ``--config``, see examples/config.py); a bad flag, config
    file or override is one ``Error:`` line and exit 2."""
    train_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')
    return config_lib.flags_parser(train_py)(argv)
