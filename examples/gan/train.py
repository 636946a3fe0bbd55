"""DCGAN example.

Trains a small DCGAN (models.Generator, models.Discriminator) on Fashion-MNIST with two
Adam optimizers stepped alternately, keeps an exponential moving average (EMA) of the
generator's weights and BatchNorm state, and scores the EMA generator's samples each epoch
with a classifier trained by train_classifier.py (Frechet distance and inception score, see
quality.py).

    python examples/gan/train_classifier.py      # once: the classifier that scores samples
    python examples/gan/train.py                 # then the GAN

Everything in --output_dir: checkpoints/ (one per epoch), tensorboard/ (event files),
metrics.jsonl (one line per epoch), train_steps.jsonl (losses every 10 steps),
samples/epoch_NNN.png (a fixed-noise grid per epoch), samples.png (the final grid) and
curves.png. --resume continues from the last checkpoint with the same result as an
uninterrupted run. ``--config=FILE`` (default configs/default.py) and ``--config.x.y=value``
set the same flags, grouped (examples/config.py).
"""

from __future__ import annotations

import functools
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

from flaxen import nn, optim
from flaxen.training import checkpoints

try:  # as part of the repository's `examples` package (tests, `python -m examples.gan.train`)
    from examples import config as config_lib
    from examples.gan import input_pipeline, models, quality, runs
except ImportError:  # as a script, `python examples/gan/train.py`, or in a forked copy
    sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import config as config_lib  # type: ignore[no-redef]  # examples/config.py
    import input_pipeline
    import models
    import quality
    import runs

FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a script, so that tests can import several examples'
    train.py files into one process without clashing flag names."""
    flags.DEFINE_float('learning_rate', 2e-4, 'Adam learning rate of both networks.')
    flags.DEFINE_float('beta1', 0.5, 'Adam beta1 of both networks (0.5, as in the DCGAN paper).')
    flags.DEFINE_integer('batch_size', 64, 'Global batch size (real images per step).')
    flags.DEFINE_integer('num_epochs', 20, 'Number of training epochs.')
    flags.DEFINE_integer('g_features', 32, 'Width of the generator (its last hidden layer).')
    flags.DEFINE_integer('d_features', 32, 'Width of the discriminator (its first layer).')
    flags.DEFINE_bool('conditional', True, 'Class-conditional generator and discriminator '
                      '(each image drawn for a given class); --noconditional: plain DCGAN.')
    flags.DEFINE_float('ema_decay', 0.999, 'Decay of the moving average of the generator '
                       'that is sampled and scored (0: the generator itself).')
    flags.DEFINE_enum('dataset', 'fashion_mnist', ['fashion_mnist', 'mnist'], 'The data set.')
    flags.DEFINE_string('data_dir', None, 'Folder with the four IDX files (default: see README).')
    flags.DEFINE_string('output_dir', '/tmp/flaxen_gan', 'Where all outputs go.')
    flags.DEFINE_string('classifier_dir', '/tmp/flaxen_gan_classifier',
                        'Output folder of train_classifier.py; empty: no quality metrics.')
    flags.DEFINE_integer('num_eval_samples', 10000, 'Generated images scored after each epoch.')
    flags.DEFINE_integer('num_train_examples', 0, 'Use only the first N training images (0: all).')
    flags.DEFINE_bool('resume', False, 'Continue from the last checkpoint in --output_dir.')
    flags.DEFINE_integer('seed', 0, 'Seed of the initialisation, the shuffling and the noise.')
    flags.DEFINE_integer('num_devices', 0, 'Local devices to use with one process (0: all).')
    flags.DEFINE_bool('progress', True, 'Show a progress bar per epoch.')
    runs.define_multiprocess_flags()


EVAL_BATCH_SIZE = 1000
GRID = 100  # images in the per-epoch sample grid: 10 x 10, column k drawn for class k
# Flags that define the computation: --resume refuses to continue a run where one differs.
CONFIG_KEYS = ('learning_rate', 'beta1', 'batch_size', 'g_features', 'd_features', 'conditional',
               'ema_decay',
               'dataset', 'num_train_examples', 'seed')


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def create_models(key, g_features, d_features, conditional=True,
                  generator_module=models.Generator):
    """``(generator, generator_state, discriminator)``: two Models and the BatchNorm state.

    ``generator_module`` is a Module with ``models.Generator``'s arguments (bench_upsampling.py
    passes variants). It is an argument, not read from ``models`` at trace time, because jit
    caches the result by the arguments."""
    g_key, d_key = random.split(key)
    num_classes = models.NUM_CLASSES if conditional else 0
    z = jnp.zeros((2, models.LATENT_DIM), jnp.float32)
    labels = jnp.zeros((2,), jnp.int32)
    g_def = generator_module.partial(features=g_features, num_classes=num_classes)
    _, g_params, g_state = g_def.init_with_state(g_key, z, labels)
    d_def = models.Discriminator.partial(features=d_features, num_classes=num_classes)
    _, d_params = d_def.init(d_key, jnp.zeros((2, 28, 28, 1), jnp.float32), labels)
    return nn.Model(g_def, g_params), g_state, nn.Model(d_def, d_params)


def create_optimizers(generator, discriminator, learning_rate, beta1):
    optimizer_def = optim.Adam(learning_rate=learning_rate, beta1=beta1)
    return optimizer_def.create(generator), optimizer_def.create(discriminator)


def bce_real(logits):
    """Binary cross-entropy of logits against the label "real", ``-log sigmoid(logits)``."""
    return jnp.mean(jax.nn.softplus(-logits))


def bce_fake(logits):
    return jnp.mean(jax.nn.softplus(logits))


@jax.jit
def train_step(g_opt, d_opt, g_state, batch):
    """One discriminator step, then one generator step, on one batch.

    Args:
      g_opt, d_opt: the two optimizers (targets: generator, discriminator Models).
      g_state: the generator's BatchNorm statistics (an ``nn.Collection``).
      batch: ``'image'`` float32 ``(B, 28, 28, 1)`` in ``[-1, 1]``, ``'label'`` int32
        ``(B,)`` (the real images' classes; the fakes are drawn for the same classes, so both
        halves of the discriminator's batch have one class mix), ``'noise'`` float32
        ``(B, LATENT_DIM)``.

    Returns:
      ``(g_opt, d_opt, g_state, metrics)``.
    """
    # The generator runs once per step, in training mode (batch statistics; its new running
    # statistics come back as g_state). jax.vjp keeps what its backward pass needs, so the
    # generator step below reuses this forward pass instead of computing it again.
    def generate(generator):
        return generator.call_with_state(g_state, batch['noise'], batch['label'])

    fake, g_vjp, g_state = jax.vjp(generate, g_opt.target, has_aux=True)

    def d_loss_fn(discriminator):
        real_logits = discriminator(batch['image'], batch['label'])
        fake_logits = discriminator(jax.lax.stop_gradient(fake), batch['label'])
        return bce_real(real_logits) + bce_fake(fake_logits), (real_logits, fake_logits)

    d_opt, d_loss, (real_logits, fake_logits) = d_opt.optimize(d_loss_fn)

    # Non-saturating generator loss, through the updated discriminator.
    def g_loss_fn(images):
        return bce_real(d_opt.target(images, batch['label']))

    g_loss, d_fake = jax.value_and_grad(g_loss_fn)(fake)
    (g_grad,) = g_vjp(d_fake)
    g_opt = g_opt.apply_gradient(g_grad)
    return g_opt, d_opt, g_state, {
        'd_loss': d_loss, 'g_loss': g_loss,
        'd_real': jnp.mean(jax.nn.sigmoid(real_logits)),  # D's belief that reals are real
        'd_fake': jnp.mean(jax.nn.sigmoid(fake_logits))}


@jax.jit
def update_ema(ema, generator, g_state, step, decay):
    """The moving average of the generator's weights and BatchNorm state after ``step`` steps.

    ``ema`` is ``{'generator': Model, 'generator_state': Collection}``. The decay is
    ``min(decay, (1 + step) / (10 + step))``, so the first steps forget the random initial
    weights quickly; ``decay=0`` copies the generator exactly.
    """
    step = jnp.asarray(step, jnp.float32)
    d = jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))
    new = {'generator': generator, 'generator_state': g_state}
    return jax.tree.map(lambda e, x: d * e + (1.0 - d) * x, ema, new)


@jax.jit
def generate(generator, g_state, noise, labels):
    """Images in ``[0, 1]`` drawn for ``labels`` from ``noise``, with the running BatchNorm
    statistics (eval mode). An unconditional generator ignores ``labels``."""
    images, _ = generator.call_with_state(g_state, noise, labels, train=False, _mutable=False)
    return input_pipeline.from_gan_range(images)


@jax.jit
def generated_sums(generator, g_state, classifier, noise, labels):
    images = generate(generator, g_state, noise, labels)
    return quality.batch_sums(*classifier(images, features=True))


def eval_noise(seed, n):
    """The fixed noise of the sample grids and of the quality metrics (the same every epoch)."""
    return onp.random.RandomState([seed, 1_000_000]).normal(
        size=(n, models.LATENT_DIM)).astype(onp.float32)


def eval_labels(n):
    """The classes asked for with ``eval_noise``: ``0, 1, ..., 9, 0, 1, ...`` (each class equally
    often, as in the test set; in the 10-column grid, column ``k`` is class ``k``)."""
    return (onp.arange(n) % models.NUM_CLASSES).astype(onp.int32)


def score(generator, g_state, classifier, reference, noise, mesh):
    """``(frechet_distance, inception_score)`` of the images generated from ``noise`` (for
    the classes of ``eval_labels``)."""
    size = runs.eval_batch_size(len(noise), EVAL_BATCH_SIZE, mesh)
    labels = eval_labels(len(noise))
    sums = [generated_sums(generator, g_state, classifier,
                           runs.local_batch(noise[i:i + size], mesh),
                           runs.local_batch(labels[i:i + size], mesh))
            for i in range(0, len(noise) - size + 1, size)]
    return quality.fid_and_is(runs.add_replicated_sums(sums), reference)


def train_epoch(state, train_ds, cfg, epoch, mesh, log_steps):
    """One pass over the training set; returns the new state and the mean metrics."""
    g_opt, d_opt, g_state, ema = state
    steps = len(train_ds['image']) // cfg.batch_size
    # Shuffling and noise depend on (seed, epoch) only, so a resumed run sees the same batches.
    rng = onp.random.RandomState([cfg.seed, epoch])
    perms = rng.permutation(len(train_ds['image']))[:steps * cfg.batch_size]
    perms = perms.reshape((steps, cfg.batch_size))
    noise = rng.normal(size=(steps, cfg.batch_size, models.LATENT_DIM)).astype(onp.float32)
    history, window = [], []
    bar = tqdm(range(steps), desc=f'epoch {epoch}', unit='step', leave=True,
               disable=not (cfg.progress and jax.process_index() == 0))
    for i in bar:
        batch = {'image': input_pipeline.to_gan_range(train_ds['image'][perms[i]]),
                 'label': train_ds['label'][perms[i]], 'noise': noise[i]}
        g_opt, d_opt, g_state, m = train_step(g_opt, d_opt, g_state, runs.local_batch(batch, mesh))
        ema = update_ema(ema, g_opt.target, g_state, (epoch - 1) * steps + i + 1, cfg.ema_decay)
        window.append(m)
        if len(window) == 10 or i == steps - 1:
            means = {k: float(onp.mean([float(w[k]) for w in window])) for k in window[0]}
            history.append(means)
            log_steps((epoch - 1) * steps + i + 1, means)
            bar.set_postfix(d_loss=f"{means['d_loss']:.3f}", g_loss=f"{means['g_loss']:.3f}")
            window = []
    weights = onp.array([10] * (len(history) - 1) + [steps - 10 * (len(history) - 1)])
    epoch_means = {k: float(onp.average([h[k] for h in history], weights=weights))
                   for k in history[0]}
    return (g_opt, d_opt, g_state, ema), epoch_means


def train(train_ds, test_ds, cfg=None):
    """Trains the GAN; returns ``(g_opt, d_opt, g_state, ema)`` (replicated when
    data-parallel; ``ema`` as in update_ema)."""
    cfg = cfg or FLAGS
    mesh = runs.make_mesh(cfg.num_devices, cfg.batch_size)
    steps_per_epoch = len(train_ds['image']) // cfg.batch_size
    if steps_per_epoch == 0:
        raise runs.UsageError(f'--batch_size={cfg.batch_size} is larger than the training set '
                              f'({len(train_ds["image"])} images).')
    out = cfg.output_dir
    runs.prepare_output_dir(out, {k: getattr(cfg, k) for k in CONFIG_KEYS}, cfg.resume)
    classifier = runs.load_classifier(cfg.classifier_dir)

    generator, g_state, discriminator = create_models(
        random.PRNGKey(cfg.seed), cfg.g_features, cfg.d_features, cfg.conditional)
    g_opt, d_opt = create_optimizers(generator, discriminator, cfg.learning_rate, cfg.beta1)
    ema = {'generator': generator, 'generator_state': g_state}
    state = {'generator': g_opt, 'discriminator': d_opt, 'generator_state': g_state,
             'generator_ema': ema}
    ckpt_dir = os.path.join(out, 'checkpoints')
    if cfg.resume:
        state = checkpoints.restore_checkpoint(ckpt_dir, state)
    first_epoch = int(state['generator'].state.step) // steps_per_epoch + 1
    if first_epoch > 1:
        logging.info('Resuming after epoch %d from %s', first_epoch - 1, ckpt_dir)
    logs = runs.Logs(out, first_epoch - 1, (first_epoch - 1) * steps_per_epoch)
    state = (state['generator'], state['discriminator'], state['generator_state'],
             state['generator_ema'])
    if mesh is not None:
        logging.info('Data-parallel over %d devices.', mesh.size)
        state = runs.replicate(state, mesh)
        classifier = runs.replicate(classifier, mesh)

    noise = eval_noise(cfg.seed, max(cfg.num_eval_samples, GRID))
    reference = None
    if classifier is not None:  # the test set's features: the target of the Frechet distance
        reference = runs.dataset_sums(classifier, test_ds['image'], mesh)
    grid_noise = runs.replicate(noise[:GRID], mesh)
    grid_labels = runs.replicate(eval_labels(GRID), mesh)
    for epoch in range(first_epoch, cfg.num_epochs + 1):
        start = time.time()
        state, row = train_epoch(state, train_ds, cfg, epoch, mesh, logs.step)
        train_seconds = time.time() - start
        g_opt, d_opt, g_state, ema = state
        # Samples and scores are those of the moving average of the generator.
        grid = runs.to_host(generate(ema['generator'], ema['generator_state'], grid_noise,
                                     grid_labels))
        if classifier is not None:
            row['fid'], row['inception_score'] = score(
                ema['generator'], ema['generator_state'], classifier, reference,
                noise[:cfg.num_eval_samples], mesh)
        row['epoch_seconds'] = train_seconds
        row['eval_seconds'] = time.time() - start - train_seconds
        checkpoints.save_checkpoint(
            ckpt_dir, runs.unreplicate({'generator': g_opt, 'discriminator': d_opt,
                                        'generator_state': g_state, 'generator_ema': ema}),
            epoch, keep=10, overwrite=True)
        logs.epoch(epoch, row, grid)
        logging.info('epoch %d: %s', epoch, ', '.join(f'{k} {v:.4g}' for k, v in row.items()))
    logs.finish(cfg.dataset, reference is not None)
    return state


def config_from_flags():
    return SimpleNamespace(**{name: FLAGS[name].value for name in (
        'learning_rate', 'beta1', 'batch_size', 'num_epochs', 'g_features', 'd_features',
        'conditional', 'ema_decay', 'dataset', 'data_dir', 'output_dir', 'classifier_dir',
        'num_eval_samples', 'num_train_examples', 'resume', 'seed', 'num_devices', 'progress')})


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    try:
        config_lib.apply_config()  # --config file and --config.x.y overrides -> the flags
        runs.initialize_multiprocess()  # before anything touches the devices
        cfg = config_from_flags()
        train_ds, test_ds = input_pipeline.get_datasets(cfg.dataset, cfg.data_dir)
        if cfg.num_train_examples:
            train_ds = {k: v[:cfg.num_train_examples] for k, v in train_ds.items()}
        logging.info('%s: %d training and %d test images; output in %s', cfg.dataset,
                     len(train_ds['image']), len(test_ds['image']), cfg.output_dir)
        train(train_ds, test_ds, cfg)
    except (input_pipeline.DataError, runs.UsageError, config_lib.ConfigFlagError) as e:
        runs.exit_with_error(e)


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=config_lib.flags_parser(__file__))  # adds --config
