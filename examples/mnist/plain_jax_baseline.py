"""The example's CNN in plain JAX + optax, for the comparison table in README.md.

Same model (Conv32 3x3 -> relu -> avg_pool 2 -> Conv64 3x3 -> relu -> avg_pool 2 -> Dense256 ->
relu -> Dense10 -> log_softmax, LeCun-normal kernels, zero biases), same optimizer (SGD with
momentum 0.9, learning rate 0.1: ``optax.sgd(0.1, momentum=0.9)`` is the same update as
``optim.Momentum``), same data, batch size and per-epoch shuffling as train.py; only flaxen is
left out. Prints one JSON line per epoch (wall time of training plus evaluation, test metrics).

    python examples/mnist/plain_jax_baseline.py --dataset=fashion_mnist \
        --data_dir=/usr/share/datasets/fashion-mnist --num_epochs=10
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as onp
import optax
from absl import app, flags
from jax import lax

try:
    from examples.mnist import input_pipeline
except ImportError:
    import input_pipeline

FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a script, so that tests can import this file beside train.py."""
    flags.DEFINE_float('learning_rate', 0.1, 'Learning rate.')
    flags.DEFINE_float('momentum', 0.9, 'Momentum.')
    flags.DEFINE_integer('batch_size', 128, 'Batch size.')
    flags.DEFINE_integer('num_epochs', 10, 'Number of epochs.')
    flags.DEFINE_string('dataset', 'fashion_mnist', 'mnist, fashion_mnist or idx.')
    flags.DEFINE_string('data_dir', None, 'Folder with the four IDX files.')
    flags.DEFINE_integer('num_train_examples', 0, 'Use only the first N training examples.')
    flags.DEFINE_integer('seed', 0, 'Seed.')


_DN = ('NHWC', 'HWIO', 'NHWC')


def init_params(key):
    """Parameter shapes as in the flaxen CNN (3x3 kernels, SAME padding)."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    lecun = jax.nn.initializers.lecun_normal()
    return {
        'conv1': {'w': lecun(k1, (3, 3, 1, 32)), 'b': jnp.zeros(32)},
        'conv2': {'w': lecun(k2, (3, 3, 32, 64)), 'b': jnp.zeros(64)},
        'dense1': {'w': lecun(k3, (7 * 7 * 64, 256)), 'b': jnp.zeros(256)},
        'dense2': {'w': lecun(k4, (256, 10)), 'b': jnp.zeros(10)},
    }


def avg_pool(x):
    summed = lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
    return summed / 4.0


def forward(params, x):
    for name in ('conv1', 'conv2'):
        x = lax.conv_general_dilated(x, params[name]['w'], (1, 1), 'SAME', dimension_numbers=_DN)
        x = avg_pool(jax.nn.relu(x + params[name]['b'][None, None, None, :]))
    x = x.reshape((x.shape[0], -1))
    x = jax.nn.relu(x @ params['dense1']['w'] + params['dense1']['b'][None, :])
    x = x @ params['dense2']['w'] + params['dense2']['b'][None, :]
    return jax.nn.log_softmax(x)


def loss_fn(params, batch):
    logits = forward(params, batch['image'])
    loss = -jnp.mean(jnp.take_along_axis(logits, batch['label'][:, None], axis=1))
    return loss, logits


def make_train_step(tx):
    @jax.jit
    def train_step(params, opt_state, batch):
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
        return params, opt_state, {'loss': loss, 'accuracy': accuracy}

    return train_step


@jax.jit
def eval_step(params, batch):
    loss, logits = loss_fn(params, batch)
    n = batch['label'].shape[0]
    return loss * n, jnp.sum(jnp.argmax(logits, -1) == batch['label'])


def evaluate(params, test_ds, size=1000):
    n = len(test_ds['label'])
    sums = [
        eval_step(params, {k: v[i : i + size] for k, v in test_ds.items()})
        for i in range(0, n, size)
    ]
    sums = jax.device_get(sums)
    return sum(float(s[0]) for s in sums) / n, sum(float(s[1]) for s in sums) / n


def main(argv):
    del argv
    train_ds, test_ds, name = input_pipeline.get_datasets(
        FLAGS.dataset, FLAGS.data_dir, num_train_examples=FLAGS.num_train_examples or None
    )
    params = init_params(jax.random.PRNGKey(FLAGS.seed))
    tx = optax.sgd(FLAGS.learning_rate, momentum=FLAGS.momentum)
    opt_state = tx.init(params)
    train_step = make_train_step(tx)
    steps = len(train_ds['label']) // FLAGS.batch_size
    for epoch in range(1, FLAGS.num_epochs + 1):
        start = time.time()
        perms = onp.random.RandomState([FLAGS.seed, epoch]).permutation(len(train_ds['label']))
        perms = perms[: steps * FLAGS.batch_size].reshape((steps, FLAGS.batch_size))
        batch_metrics = []
        for perm in perms:
            batch = {k: v[perm] for k, v in train_ds.items()}
            params, opt_state, m = train_step(params, opt_state, batch)
            batch_metrics.append(m)
        batch_metrics = jax.device_get(batch_metrics)
        test_loss, test_accuracy = evaluate(params, test_ds)
        print(
            json.dumps(
                {
                    'impl': 'plain_jax_optax',
                    'dataset': name,
                    'epoch': epoch,
                    'epoch_seconds': time.time() - start,
                    'train_loss': float(onp.mean([m['loss'] for m in batch_metrics])),
                    'train_accuracy': float(onp.mean([m['accuracy'] for m in batch_metrics])),
                    'test_loss': test_loss,
                    'test_accuracy': test_accuracy,
                }
            ),
            flush=True,
        )


if __name__ == '__main__':
    define_flags()
    app.run(main)
