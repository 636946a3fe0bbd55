"""Run bookkeeping shared by train.py and train_classifier.py: several processes, the device
mesh, the output folder (the --resume rule), the logs and the classifier checkpoint."""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
from typing import Any, NoReturn

import jax
import numpy as onp
from absl import flags, logging

from flaxen import metrics, parallel
from flaxen.errors import FlaxenError
from flaxen.training import checkpoints

try:
    from examples.gan import models, plots, quality
except ImportError:
    import models
    import plots
    import quality

FLAGS = flags.FLAGS


class UsageError(FlaxenError):
    """A flag value or an output folder that does not fit this run."""


def exit_with_error(error: Exception) -> NoReturn:
    """One clean ``Error:`` line on stderr and exit status 2 (no traceback)."""
    print(f'Error: {error}', file=sys.stderr, flush=True)
    sys.exit(2)


# -- Several processes ------------------------------------------------------------------------


def define_multiprocess_flags() -> None:
    flags.DEFINE_string('coordinator_address', None,
                        'HOST:PORT of process 0, to train with several processes.')
    flags.DEFINE_integer('num_processes', 1, 'Number of processes (with --coordinator_address).')
    flags.DEFINE_integer('process_id', 0, 'This process: 0 .. --num_processes - 1.')


def initialize_multiprocess() -> None:
    """``jax.distributed.initialize`` when --coordinator_address is given. Call it first."""
    address, n, i = FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    if not address:
        if n != 1 or i != 0:
            raise UsageError(f'--num_processes={n} --process_id={i} needs '
                             '--coordinator_address=HOST:PORT (the address of process 0).')
        return
    if n < 1 or not 0 <= i < n:
        raise UsageError(f'--process_id={i} must be in 0 .. {n - 1} (--num_processes={n}).')
    # On CPU the processes exchange gradients over gloo (GPUs and TPUs use their own links).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(address, num_processes=n, process_id=i)
    logging.info('Process %d of %d; %d devices in all.', i, n, jax.device_count())


def is_main_process() -> bool:
    return jax.process_index() == 0


# -- Data parallelism -------------------------------------------------------------------------


def make_mesh(num_devices: int, batch_size: int) -> jax.sharding.Mesh | None:
    """A one-axis mesh over all devices (all processes'), or the first ``num_devices`` local
    ones with one process; None for a single device."""
    if jax.process_count() > 1:
        if num_devices:
            raise UsageError('--num_devices is for one process; with several, every device '
                             'of every process is used.')
        mesh = parallel.default_mesh()
    else:
        available = jax.local_device_count()
        n = num_devices or available
        if not 1 <= n <= available:
            raise UsageError(f'--num_devices={num_devices}: expected 0 (all) or 1..{available}.')
        if n == 1:
            return None
        mesh = jax.sharding.Mesh(onp.array(jax.local_devices()[:n]), (parallel.BATCH_AXIS,))
    if batch_size % mesh.size:
        raise UsageError(f'--batch_size={batch_size} must be divisible by the number of '
                         f'devices ({mesh.size}).')
    return mesh


def local_batch(batch: Any, mesh: jax.sharding.Mesh | None) -> Any:
    """The global batch (host arrays, the same on every process) as device arrays split over
    the mesh; each process hands over only its own slice of it."""
    if mesh is None:
        return batch
    n, i = jax.process_count(), jax.process_index()
    local = jax.tree.map(lambda x: x[i * (len(x) // n):(i + 1) * (len(x) // n)], batch)
    return parallel.shard_batch(local, mesh)


def eval_batch_size(n: int, size: int, mesh: jax.sharding.Mesh | None) -> int:
    """``min(size, n)`` rounded down to a multiple of the devices (the rest is skipped)."""
    devices = 1 if mesh is None else mesh.size
    size = min(size, n) // devices * devices
    if size == 0:
        raise UsageError(f'{n} images cannot be split over {devices} devices.')
    return size


def replicate(tree: Any, mesh: jax.sharding.Mesh | None) -> Any:
    return tree if mesh is None else parallel.replicate(tree, mesh)


def unreplicate(tree: Any) -> Any:
    return parallel.unreplicate(tree)


def to_host(x: Any) -> Any:
    return jax.device_get(parallel.unreplicate(x))


@jax.jit
def classifier_sums(classifier: Any, images: Any) -> dict:
    return quality.batch_sums(*classifier(images, features=True))


def dataset_sums(classifier: Any, images: onp.ndarray, mesh: jax.sharding.Mesh | None) -> dict:
    """Feature and probability sums (quality.batch_sums) of ``images`` in [0, 1]."""
    size = eval_batch_size(len(images), 1000, mesh)
    sums = [classifier_sums(classifier, local_batch(images[i:i + size], mesh))
            for i in range(0, len(images) - size + 1, size)]
    return add_replicated_sums(sums)


def add_replicated_sums(sums: list[dict]) -> dict[str, onp.ndarray]:
    return quality.add_sums([parallel.unreplicate(s) for s in sums])


# -- Output folder and logs -------------------------------------------------------------------


def prepare_output_dir(out: str, config: dict, resume: bool) -> None:
    """Creates ``out`` and writes ``config.json``; with ``resume``, refuses a different one."""
    path = os.path.join(out, 'config.json')
    if resume and os.path.exists(path):
        with open(path, encoding='utf-8') as f:
            saved = json.load(f)
        diff = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
        if diff:
            changes = ', '.join(f'--{k}={new!r} (the run has {old!r})'
                                for k, (old, new) in sorted(diff.items()))
            raise UsageError(f'--resume: {out} holds a run with another configuration: '
                             f'{changes}. Use the same flags, or another --output_dir.')
    if is_main_process():
        os.makedirs(out, exist_ok=True)
        with open(path, 'w', encoding='utf-8') as f:
            json.dump(config, f, indent=1)


def _keep_rows(path: str, last: int) -> list[dict]:
    """Rows of ``path`` with ``step <= last`` (a resumed run drops those after its checkpoint)."""
    rows = metrics.read_jsonl(path) if os.path.exists(path) else []
    rows = [r for r in rows if r['step'] <= last]
    with open(path, 'w', encoding='utf-8') as f:
        for row in rows:
            f.write(json.dumps(row) + '\n')
    return rows


class Logs:
    """metrics.jsonl, train_steps.jsonl, TensorBoard, sample grids and curves (process 0)."""

    def __init__(self, out: str, last_epoch: int, last_step: int):
        self.out = out
        self.enabled = is_main_process()
        if not self.enabled:
            return
        if last_epoch == 0:  # a fresh start: nothing of an earlier run may mix with this one
            for old in glob.glob(os.path.join(out, 'tensorboard', 'events.out.tfevents.*')):
                os.remove(old)
            shutil.rmtree(os.path.join(out, 'samples'), ignore_errors=True)
        self.epochs = _keep_rows(os.path.join(out, 'metrics.jsonl'), last_epoch)
        self.steps = _keep_rows(os.path.join(out, 'train_steps.jsonl'), last_step)
        self.epoch_writer = metrics.JsonlWriter(os.path.join(out, 'metrics.jsonl'))
        self.step_writer = metrics.JsonlWriter(os.path.join(out, 'train_steps.jsonl'))
        self.tensorboard = metrics.SummaryWriter(os.path.join(out, 'tensorboard'))

    def step(self, step: int, values: dict) -> None:
        if self.enabled:
            self.step_writer.write(step, values)
            self.steps.append({'step': step, **values})

    def epoch(self, epoch: int, values: dict, grid_images: onp.ndarray) -> None:
        if not self.enabled:
            return
        self.epoch_writer.write(epoch, values)
        self.epochs.append({'step': epoch, **values})
        for k, v in values.items():
            self.tensorboard.scalar(k, v, epoch)
        grid = plots.grid(grid_images, columns=10)
        self.tensorboard.image('samples', grid, epoch)
        plots.save_png(grid, os.path.join(self.out, 'samples', f'epoch_{epoch:03d}.png'),
                       scale=3)

    def finish(self, title: str, with_quality: bool) -> None:
        if not self.enabled:
            return
        self.epoch_writer.close()
        self.step_writer.close()
        self.tensorboard.close()
        if self.epochs:
            last = os.path.join(self.out, 'samples', f'epoch_{self.epochs[-1]["step"]:03d}.png')
            shutil.copyfile(last, os.path.join(self.out, 'samples.png'))
            plots.plot_curves(self.steps, self.epochs, os.path.join(self.out, 'curves.png'),
                              f'DCGAN on {title}', with_quality)


# -- The classifier that scores samples -------------------------------------------------------


def classifier_template() -> Any:
    _, model = models.Classifier.create_by_shape(jax.random.PRNGKey(0), [(1, 28, 28, 1)])
    return model


def load_classifier(classifier_dir: str | None) -> Any:
    """The Classifier Model saved by train_classifier.py, or None when no folder is given."""
    if not classifier_dir:
        logging.warning('No --classifier_dir: training without quality metrics.')
        return None
    ckpt = os.path.join(classifier_dir, 'checkpoints')
    if not glob.glob(os.path.join(ckpt, 'checkpoint_*')):
        raise UsageError(f'No classifier checkpoint in {ckpt}. Train it first with '
                         f'`python examples/gan/train_classifier.py --output_dir={classifier_dir}`'
                         ', or pass --classifier_dir= to train without quality metrics.')
    return checkpoints.restore_checkpoint(ckpt, classifier_template())
