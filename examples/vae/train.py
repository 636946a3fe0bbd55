"""Variational autoencoder example (Kingma and Welling, 2014) on binarised (Fashion-)MNIST.

An MLP encoder and decoder (500 hidden units, 20 latent dimensions), Bernoulli pixels, Adam
with learning rate 1e-3, batches of 128, 30 epochs: the classic reference setup.

    python examples/vae/train.py                       # Fashion-MNIST, see README.md
    python examples/vae/train.py --dataset=mnist --data_dir=/path/to/mnist

Everything in --output_dir: checkpoints/ (one per epoch), tensorboard/ (event files),
metrics.jsonl (one line per epoch), config.json, learning_curves.png, and at the end
reconstructions.png and samples.png. --resume continues from the last checkpoint with the
same result as an uninterrupted run.
"""

from __future__ import annotations

import functools
import glob
import json
import math
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

from flaxen import metrics, nn, optim, parallel
from flaxen.errors import FlaxenError
from flaxen.training import checkpoints

try:  # as part of the repository's `examples` package (tests, `python -m examples.vae.train`)
    from examples import config as config_lib
    from examples.vae import input_pipeline, models, pictures
except ImportError:  # as a script, `python examples/vae/train.py`, or in a forked copy
    sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import config as config_lib  # type: ignore[no-redef]  # examples/config.py
    import input_pipeline  # type: ignore[no-redef]
    import models  # type: ignore[no-redef]
    import pictures  # type: ignore[no-redef]

FLAGS = flags.FLAGS


def define_flags():
    """The command line. Defined when run as a script, not on import, so that several
    examples' modules can be imported into one test process without clashing flags."""
    flags.DEFINE_enum('dataset', 'fashion_mnist', ['fashion_mnist', 'mnist'],
                      'Which images (binarised once, with a fixed seed).')
    flags.DEFINE_string('data_dir', None, 'A folder with the four IDX files (default: '
                        '$FLAXEN_DATA/<dataset>, then /usr/share/datasets/fashion-mnist).')
    flags.DEFINE_string('output_dir', '/tmp/flaxen_vae', 'Checkpoints, metrics, plots, pictures.')
    flags.DEFINE_bool('resume', False, 'Continue the run in --output_dir (same configuration).')
    flags.DEFINE_integer('num_epochs', 30, 'Number of training epochs.')
    flags.DEFINE_integer('batch_size', 128, 'Global batch size (over all devices and processes).')
    flags.DEFINE_float('learning_rate', 1e-3, 'Adam learning rate.')
    flags.DEFINE_integer('latents', 20, 'Latent dimensions.')
    flags.DEFINE_integer('hidden', 500, 'Hidden units of the encoder and of the decoder.')
    flags.DEFINE_integer('iwae_samples', 100, 'k of the importance-weighted log-likelihood '
                         'estimate on the test set after the last epoch (0: skip it).')
    flags.DEFINE_integer('seed', 0, 'Seed of the initialisation, the shuffling and the noise.')
    flags.DEFINE_integer('num_train_examples', 0, 'Use only the first N training images (0: all).')
    flags.DEFINE_integer('num_devices', 0, 'Local devices to train on (0: all; one process only).')
    flags.DEFINE_bool('progress', True, 'Show a progress bar per epoch.')
    flags.DEFINE_string('coordinator_address', None,
                        'HOST:PORT of process 0, for several processes.')
    flags.DEFINE_integer('num_processes', 1, 'Number of processes.')
    flags.DEFINE_integer('process_id', 0, 'This process, 0..num_processes-1.')


EVAL_BATCH_SIZE = 1000
IWAE_ROWS = 20_000  # decoder rows per IWAE batch (k samples x images): bounds its memory
# A change of these between a run and its --resume is refused.
RUN_KEYS = ('dataset', 'batch_size', 'learning_rate', 'latents', 'hidden', 'seed',
            'num_train_examples')


class ConfigError(FlaxenError):
    """Flags that do not fit together, or --resume with another configuration."""


# -- Model, loss, steps ---------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(1, 2))  # one compiled program, cached per size
def create_model(key, latents=20, hidden=500):
    """A freshly initialised ``Model`` of ``models.VAE``."""
    module = models.VAE.partial(latents=latents, hidden=hidden)
    return module.create_by_shape(key, [((1, models.NUM_PIXELS), jnp.float32)])[1]


def create_optimizer(model, learning_rate):
    return optim.Adam(learning_rate=learning_rate).create(model)


def bernoulli_log_likelihood(logits, x):
    """log p(x | logits) summed over pixels: ``(..., 784) -> (...)``."""
    return jnp.sum(x * nn.log_sigmoid(logits) + (1.0 - x) * nn.log_sigmoid(-logits), axis=-1)


def gaussian_kl(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over latents: ``(..., L) -> (...)``."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


def negative_elbo(model, x, key):
    """Per image: ``(neg_elbo, reconstruction, kl)``, each ``(batch,)``, in nats."""
    with nn.stochastic(key):
        logits, mean, logvar = model(x)
    reconstruction = -bernoulli_log_likelihood(logits, x)
    kl = gaussian_kl(mean, logvar)
    return reconstruction + kl, reconstruction, kl


@jax.jit
def train_step(optimizer, batch, rng):
    """One Adam step on the mean negative ELBO of ``batch['image']`` (uint8 (B, 784))."""
    x = batch['image'].astype(jnp.float32)
    key = random.fold_in(rng, optimizer.state.step)  # a function of the step: resumable

    def loss_fn(model):
        loss, reconstruction, kl = negative_elbo(model, x, key)
        return jnp.mean(loss), (jnp.mean(reconstruction), jnp.mean(kl))
    optimizer, loss, (reconstruction, kl) = optimizer.optimize(loss_fn)
    return optimizer, {'loss': loss, 'reconstruction': reconstruction, 'kl': kl}


@jax.jit
def eval_step(model, batch, key):
    """Sums (not means) over a batch, so rows padded with ``mask == 0`` add nothing."""
    loss, reconstruction, kl = negative_elbo(model, batch['image'].astype(jnp.float32), key)
    mask = batch['mask']
    return {'loss': jnp.sum(loss * mask), 'reconstruction': jnp.sum(reconstruction * mask),
            'kl': jnp.sum(kl * mask), 'count': jnp.sum(mask)}


@functools.partial(jax.jit, static_argnums=3)
def iwae_step(model, batch, key, k):
    """Sum over the batch of the k-sample importance-weighted bound on log p(x) (nats).

    log p(x) >= E[log (1/k) sum_i p(x, z_i) / q(z_i | x)], z_i ~ q(z | x) (Burda et al.); the
    bound tightens towards log p(x) as k grows.
    """
    x = batch['image'].astype(jnp.float32)
    mean, logvar = model.encode(x)
    eps = random.normal(key, (k,) + mean.shape, mean.dtype)
    z = mean[None] + jnp.exp(0.5 * logvar)[None] * eps  # (k, B, L)
    logits = model.decode(z.reshape((-1, z.shape[-1]))).reshape((k,) + x.shape)
    log_normal = lambda v: -0.5 * jnp.sum(jnp.square(v) + math.log(2 * math.pi), axis=-1)
    log_p_z = log_normal(z)
    log_q_z = log_normal(eps) - 0.5 * jnp.sum(logvar, axis=-1)[None]
    log_w = bernoulli_log_likelihood(logits, x[None]) + log_p_z - log_q_z  # (k, B)
    log_px = jax.nn.logsumexp(log_w, axis=0) - math.log(k)
    return jnp.sum(log_px * batch['mask'])


# -- Devices and processes ------------------------------------------------------------------


def make_mesh(num_devices):
    """The mesh to train on: all devices of all processes, or the first ``num_devices``
    local ones; None for a single device (no sharding needed)."""
    if jax.process_count() > 1:
        if num_devices:
            raise ConfigError('--num_devices is for one process; with several processes every '
                              'device of every process is used. Drop --num_devices.')
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
    """This process's rows of a global batch, placed on the mesh.

    Every process computes the same global batch (same seed); process p feeds rows
    ``[p * B/P, (p + 1) * B/P)`` of it, which is what ``shard_batch`` expects.
    """
    if mesh is None:
        return batch
    count, index = jax.process_count(), jax.process_index()
    if count > 1:
        size = len(batch['image']) // count
        batch = {k: v[index * size:(index + 1) * size] for k, v in batch.items()}
    return parallel.shard_batch(batch, mesh)


def padded_batches(ds, size, mesh):
    """``ds`` in batches of ``size`` (rounded up to a multiple of the devices), the last one
    padded with ``mask == 0`` rows."""
    if mesh is not None:
        size = -(-size // mesh.size) * mesh.size
    n = len(ds['image'])
    total = -(-n // size) * size
    padded = {k: onp.concatenate([v, onp.zeros((total - n,) + v.shape[1:], v.dtype)])
              for k, v in ds.items() if k == 'image'}
    padded['mask'] = (onp.arange(total) < n).astype(onp.float32)
    for i in range(0, total, size):
        yield put_batch({k: v[i:i + size] for k, v in padded.items()}, mesh)


# -- Epochs and evaluation ------------------------------------------------------------------


def train_epoch(optimizer, train_ds, batch_size, epoch, cfg, rng, mesh=None):
    """Trains for one epoch: ``(optimizer, mean metrics, per-step losses)``."""
    steps = len(train_ds['image']) // batch_size
    # The shuffling depends on (seed, epoch) only, so a resumed run sees the same batches.
    perms = onp.random.RandomState([cfg.seed, epoch]).permutation(len(train_ds['image']))
    perms = perms[:steps * batch_size].reshape((steps, batch_size))  # drop the last partial
    step_metrics = []
    show = cfg.progress and jax.process_index() == 0
    bar = tqdm(perms, desc=f'epoch {epoch}', unit='step', disable=not show, leave=True)
    for step, perm in enumerate(bar, 1):
        batch = {'image': train_ds['image'][perm]}
        optimizer, m = train_step(optimizer, put_batch(batch, mesh), rng)
        step_metrics.append(m)
        if show and (step % 20 == 0 or step == steps):
            bar.set_postfix(neg_elbo=f'{float(m["loss"]):.2f}')
    step_metrics = jax.device_get(step_metrics)
    means = {k: float(onp.mean([m[k] for m in step_metrics])) for k in step_metrics[0]}
    return optimizer, means, [float(m['loss']) for m in step_metrics]


def eval_model(model, test_ds, key, mesh=None):
    """Mean test ``loss`` (negative ELBO), ``reconstruction`` and ``kl`` in nats per image;
    one draw of z per image from ``key``."""
    sums = [eval_step(model, batch, random.fold_in(key, i))
            for i, batch in enumerate(padded_batches(test_ds, EVAL_BATCH_SIZE, mesh))]
    sums = jax.device_get(sums)
    total = {k: float(sum(s[k] for s in sums)) for k in sums[0]}
    return {k: total[k] / total['count'] for k in ('loss', 'reconstruction', 'kl')}


def iwae_nll(model, test_ds, key, k, mesh=None):
    """The test negative log-likelihood estimate ``-log p(x)`` from k importance samples
    (an upper bound on the true NLL, tighter than the negative ELBO), nats per image."""
    size = max(1, IWAE_ROWS // k)
    sums = [iwae_step(model, batch, random.fold_in(key, i), k)
            for i, batch in enumerate(padded_batches(test_ds, size, mesh))]
    return -float(sum(jax.device_get(sums))) / len(test_ds['image'])


# -- The run --------------------------------------------------------------------------------


def check_run_config(out, cfg):
    """Writes ``config.json``; with ``--resume``, first refuses another configuration."""
    path = os.path.join(out, 'config.json')
    now = {k: getattr(cfg, k) for k in RUN_KEYS}
    if cfg.resume and os.path.exists(path):
        with open(path, encoding='utf-8') as f:
            saved = json.load(f)
        diff = [f'--{k}={saved.get(k)!r} -> {now[k]!r}' for k in RUN_KEYS
                if saved.get(k) != now[k]]
        if diff:
            raise ConfigError(f'--resume: {out} holds a run with another configuration '
                              f'({", ".join(diff)}). Use the same flags to continue it, or a '
                              'new --output_dir.')
    if jax.process_index() == 0:
        with open(path + '.tmp', 'w', encoding='utf-8') as f:
            json.dump(now, f, indent=1)
        os.replace(path + '.tmp', path)


def restore_history(path, last_epoch):
    """The metrics rows of epochs 1..last_epoch (a resumed run rewrites the file without
    later rows, which a run interrupted after its last checkpoint may have left)."""
    rows = metrics.read_jsonl(path) if os.path.exists(path) else []
    history = sorted((r for r in rows if r['step'] <= last_epoch), key=lambda r: r['step'])
    if jax.process_index() == 0:
        with open(path, 'w', encoding='utf-8') as f:
            for row in history:
                f.write(json.dumps(row) + '\n')
    return history


def load_model(output_dir):
    """The trained ``Model`` of the run in ``output_dir`` (its latest checkpoint).

    ``model.generate(z)`` then gives images for latent codes, ``model.encode(x)`` the
    posterior of binarised images and ``model.decode(z)`` the Bernoulli logits.
    """
    with open(os.path.join(output_dir, 'config.json'), encoding='utf-8') as f:
        cfg = json.load(f)
    model = create_model(random.PRNGKey(0), cfg['latents'], cfg['hidden'])
    template = create_optimizer(model, cfg['learning_rate'])
    return checkpoints.restore_checkpoint(os.path.join(output_dir, 'checkpoints'),
                                          template).target


def train(train_ds, test_ds, cfg=None):
    """Trains the VAE, evaluates it after every epoch and writes everything to
    ``cfg.output_dir``. Returns the final optimizer.

    Raises:
      ConfigError: flags that do not fit the data or devices, or ``--resume`` with another
        configuration.
    """
    cfg = cfg or config_from_flags()
    for name in ('batch_size', 'latents', 'hidden'):
        if getattr(cfg, name) < 1:
            raise ConfigError(f'--{name} must be at least 1, got {getattr(cfg, name)}.')
    if cfg.num_epochs < 0 or cfg.iwae_samples < 0:
        raise ConfigError('--num_epochs and --iwae_samples must be >= 0.')
    mesh = make_mesh(cfg.num_devices)
    if mesh is not None and cfg.batch_size % mesh.size:
        raise ConfigError(f'--batch_size={cfg.batch_size} must be divisible by the number of '
                          f'devices ({mesh.size}); pass another --batch_size.')
    steps_per_epoch = len(train_ds['image']) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f'--batch_size={cfg.batch_size} is larger than the training set '
                          f'({len(train_ds["image"])} images).')
    main_process = jax.process_index() == 0
    init_key, train_key, eval_key, picture_key = random.split(random.PRNGKey(cfg.seed), 4)
    optimizer = create_optimizer(create_model(init_key, cfg.latents, cfg.hidden),
                                 cfg.learning_rate)

    out = cfg.output_dir
    os.makedirs(out, exist_ok=True)
    check_run_config(out, cfg)
    ckpt_dir = os.path.join(out, 'checkpoints')
    if cfg.resume:
        optimizer = checkpoints.restore_checkpoint(ckpt_dir, optimizer)
    first_epoch = int(optimizer.state.step) // steps_per_epoch + 1
    if first_epoch > 1:
        logging.info('Resuming after epoch %d from %s', first_epoch - 1, ckpt_dir)
    elif main_process:  # a fresh start: earlier event files would mix with this run's curves
        for path in glob.glob(os.path.join(out, 'tensorboard', 'events.out.tfevents.*')):
            os.remove(path)
    history = restore_history(os.path.join(out, 'metrics.jsonl'), first_epoch - 1)
    if mesh is not None:
        logging.info('Data-parallel over %d devices in %d process(es).', mesh.size,
                     jax.process_count())
        optimizer = optimizer.replicate(mesh)
    writers = ((metrics.JsonlWriter(os.path.join(out, 'metrics.jsonl')),
                metrics.SummaryWriter(os.path.join(out, 'tensorboard'))) if main_process
               else None)

    for epoch in range(first_epoch, cfg.num_epochs + 1):
        start = time.time()
        optimizer, train_metrics, step_losses = train_epoch(
            optimizer, train_ds, cfg.batch_size, epoch, cfg, train_key, mesh)
        test_metrics = eval_model(optimizer.target, test_ds, eval_key, mesh)
        row = {**{'train_' + k: v for k, v in train_metrics.items()},
               **{'test_' + k: v for k, v in test_metrics.items()},
               'epoch_seconds': time.time() - start}  # training and evaluation
        logging.info('epoch %d: train -ELBO %.2f, test -ELBO %.2f (reconstruction %.2f, KL '
                     '%.2f) nats, %.1f s', epoch, row['train_loss'], row['test_loss'],
                     row['test_reconstruction'], row['test_kl'], row['epoch_seconds'])
        if epoch == cfg.num_epochs and cfg.iwae_samples:
            start = time.time()
            row['test_iwae_nll'] = iwae_nll(optimizer.target, test_ds, eval_key,
                                            cfg.iwae_samples, mesh)
            row['iwae_samples'] = cfg.iwae_samples
            row['iwae_seconds'] = time.time() - start
            logging.info('test -log p(x) <= %.2f nats (IWAE, k=%d), %.1f s',
                         row['test_iwae_nll'], cfg.iwae_samples, row['iwae_seconds'])
        host_optimizer = optimizer if mesh is None else optimizer.unreplicate()
        checkpoints.save_checkpoint(ckpt_dir, host_optimizer, epoch, keep=3, overwrite=True)
        row['train_loss_steps'] = step_losses  # for the per-step curve of short runs
        history.append({'step': epoch, **row})
        if writers:
            writers[0].write(epoch, row)
            for k, v in row.items():
                if k.startswith(('train_', 'test_')) and k != 'train_loss_steps':
                    writers[1].scalar(k, v, epoch)
    if writers:
        model = optimizer.target if mesh is None else optimizer.unreplicate().target
        if history:
            pictures.plot_learning_curves(history, os.path.join(out, 'learning_curves.png'),
                                          f'VAE on binarised {cfg.dataset}')
        if cfg.num_epochs >= first_epoch:  # this run trained: draw the final model
            grids = pictures.write_pictures(model, test_ds, picture_key, out)
            for name, grid in grids.items():
                writers[1].image(name, grid, cfg.num_epochs)
        for w in writers:
            w.close()
    return optimizer


# -- Command line ---------------------------------------------------------------------------


def config_from_flags():
    return SimpleNamespace(**{name: FLAGS[name].value for name in (
        'dataset', 'data_dir', 'output_dir', 'resume', 'num_epochs', 'batch_size',
        'learning_rate', 'latents', 'hidden', 'iwae_samples', 'seed', 'num_train_examples',
        'num_devices', 'progress')})


def init_processes():
    """``jax.distributed.initialize`` when --coordinator_address is given (before any use of
    the devices); on CPU, the gloo collectives."""
    if not FLAGS.coordinator_address:
        if FLAGS.num_processes != 1 or FLAGS.process_id != 0:
            raise ConfigError('--num_processes and --process_id need --coordinator_address.')
        return
    if not 0 <= FLAGS.process_id < FLAGS.num_processes:
        raise ConfigError(f'--process_id={FLAGS.process_id} must be in 0..'
                          f'{FLAGS.num_processes - 1} (--num_processes={FLAGS.num_processes}).')
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    try:
        config_lib.apply_config()  # --config file and --config.x.y overrides -> the flags
        init_processes()
        cfg = config_from_flags()
        train_ds, test_ds, folder = input_pipeline.get_datasets(
            cfg.dataset, cfg.data_dir, cfg.num_train_examples or None)
        logging.info('%s from %s: %d train and %d test images; output in %s', cfg.dataset,
                     folder, len(train_ds['image']), len(test_ds['image']), cfg.output_dir)
        train(train_ds, test_ds, cfg)
    except (ConfigError, config_lib.ConfigFlagError, input_pipeline.DataError) as e:
        print(f'Error: {e}', file=sys.stderr)  # a clear message, not a traceback
        sys.exit(2)


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=config_lib.flags_parser(__file__))  # adds --config
