"""Trains the classifier that scores the GAN's samples, and measures the real-data floor.

The classifier is the MNIST example's CNN (models.Classifier), trained with SGD + momentum
on the same training set as the GAN. Its 256 last hidden activations are the feature space
of the Frechet distance, and its class probabilities give the inception score (quality.py).

    python examples/gan/train_classifier.py     # writes /tmp/flaxen_gan_classifier

In --output_dir: checkpoints/checkpoint_N (the Classifier Model), metrics.jsonl (test
accuracy per epoch) and floor.json: the Frechet distance between 10,000 training images and
the test set, and the inception scores of both, i.e. what a perfect generator would get.
"""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as onp
from absl import app, flags, logging
from tqdm import tqdm

from flaxen import metrics, optim
from flaxen.training import checkpoints

try:
    from examples.gan import input_pipeline, models, quality, runs
except ImportError:
    import input_pipeline
    import models
    import quality
    import runs

FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a script, so that tests can import this file beside train.py."""
    flags.DEFINE_float('learning_rate', 0.1, 'Learning rate of SGD with momentum 0.9.')
    flags.DEFINE_integer('batch_size', 128, 'Batch size.')
    flags.DEFINE_integer('num_epochs', 15, 'Number of training epochs.')
    flags.DEFINE_enum('dataset', 'fashion_mnist', ['fashion_mnist', 'mnist'], 'The data set.')
    flags.DEFINE_string('data_dir', None, 'Folder with the four IDX files (see README).')
    flags.DEFINE_string('output_dir', '/tmp/flaxen_gan_classifier', 'Where the outputs go.')
    flags.DEFINE_integer('seed', 0, 'Seed of the initialisation and the shuffling.')
    flags.DEFINE_integer('num_devices', 0, 'Local devices to use (0: all).')
    flags.DEFINE_bool('progress', True, 'Show a progress bar per epoch.')


FLOOR_SAMPLES = 10000  # training images compared with the test set, as many as GAN samples


@jax.jit
def train_step(optimizer, batch):
    def loss_fn(model):
        log_probs = model(batch['image'])
        return -jnp.mean(jnp.take_along_axis(log_probs, batch['label'][:, None], axis=1))
    optimizer, loss = optimizer.optimize(loss_fn)  # a bare loss: (optimizer, loss)
    return optimizer, loss


@jax.jit
def correct(model, images, labels):
    return jnp.sum(jnp.argmax(model(images), -1) == labels)


def accuracy(model, ds, mesh):
    size = runs.eval_batch_size(len(ds['label']), 1000, mesh)
    hits = [correct(model, *runs.local_batch((ds['image'][i:i + size], ds['label'][i:i + size]),
                                             mesh))
            for i in range(0, len(ds['label']) - size + 1, size)]
    return float(sum(runs.to_host(h) for h in hits)) / (len(hits) * size)


def real_data_floor(model, train_ds, test_ds, seed, mesh):
    """Scores of real images: training images against the test set (a perfect generator)."""
    pick = onp.random.RandomState(seed).permutation(len(train_ds['image']))[:FLOOR_SAMPLES]
    test = runs.dataset_sums(model, test_ds['image'], mesh)
    train = runs.dataset_sums(model, train_ds['image'][pick], mesh)
    fid, train_is = quality.fid_and_is(train, test)
    return {'fid_train_vs_test': fid, 'inception_score_train': train_is,
            'inception_score_test': quality.inception_score(test),
            'num_train_images': len(pick)}


def train(train_ds, test_ds, cfg):
    """Trains the classifier; returns the Model (saved in cfg.output_dir/checkpoints)."""
    mesh = runs.make_mesh(cfg.num_devices, cfg.batch_size)
    _, model = models.Classifier.create_by_shape(jax.random.PRNGKey(cfg.seed), [(1, 28, 28, 1)])
    optimizer = optim.Momentum(learning_rate=cfg.learning_rate, beta=0.9).create(model)
    optimizer = runs.replicate(optimizer, mesh)
    steps = len(train_ds['label']) // cfg.batch_size
    os.makedirs(cfg.output_dir, exist_ok=True)
    with metrics.JsonlWriter(os.path.join(cfg.output_dir, 'metrics.jsonl')) as log:
        for epoch in range(1, cfg.num_epochs + 1):
            start = time.time()
            rng = onp.random.RandomState([cfg.seed, epoch])
            perms = rng.permutation(len(train_ds['label']))[:steps * cfg.batch_size]
            losses = []
            for perm in tqdm(perms.reshape((steps, cfg.batch_size)), desc=f'epoch {epoch}',
                             disable=not cfg.progress):
                batch = {k: v[perm] for k, v in train_ds.items()}
                optimizer, loss = train_step(optimizer, runs.local_batch(batch, mesh))
                losses.append(loss)
            row = {'train_loss': float(onp.mean(jax.device_get(losses))),
                   'test_accuracy': accuracy(optimizer.target, test_ds, mesh),
                   'epoch_seconds': time.time() - start}
            log.write(epoch, row)
            logging.info('epoch %d: %s', epoch, row)
    model = runs.unreplicate(optimizer.target)
    checkpoints.save_checkpoint(os.path.join(cfg.output_dir, 'checkpoints'), model,
                                cfg.num_epochs, overwrite=True)
    return model, row['test_accuracy']


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    cfg = SimpleNamespace(**{name: FLAGS[name].value for name in (
        'learning_rate', 'batch_size', 'num_epochs', 'dataset', 'data_dir', 'output_dir',
        'seed', 'num_devices', 'progress')})
    try:
        train_ds, test_ds = input_pipeline.get_datasets(cfg.dataset, cfg.data_dir)
        mesh = runs.make_mesh(cfg.num_devices, cfg.batch_size)
        model, test_accuracy = train(train_ds, test_ds, cfg)
        floor = real_data_floor(runs.replicate(model, mesh), train_ds, test_ds, cfg.seed, mesh)
    except (input_pipeline.DataError, runs.UsageError) as e:
        runs.exit_with_error(e)
    floor.update(dataset=cfg.dataset, test_accuracy=test_accuracy)
    with open(os.path.join(cfg.output_dir, 'floor.json'), 'w', encoding='utf-8') as f:
        json.dump(floor, f, indent=1)
    logging.info('Real-data floor: %s', floor)
    print(json.dumps(floor))


if __name__ == '__main__':
    define_flags()
    app.run(main)
