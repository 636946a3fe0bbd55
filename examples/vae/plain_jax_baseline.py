"""The example's VAE in plain JAX + optax, for the comparison table in README.md.

Same model (encoder 784 -> 500 relu -> (mean, logvar) of 20 latents; decoder 20 -> 500 relu
-> 784 Bernoulli logits; LeCun-normal kernels, zero biases), same loss (negative ELBO with one
reparameterised draw of z per image), same optimizer (``optax.adam(1e-3)``, which is what
``optim.Adam`` runs), same binarised data, batch size, shuffling and test evaluation as
train.py; only flaxen is left out. Prints one JSON line per epoch (wall time of training plus
evaluation, train and test negative ELBO) and the IWAE estimate after the last epoch.

    python examples/vae/plain_jax_baseline.py --num_epochs=30
"""

import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as onp
import optax
from absl import app, flags

try:
    from examples.vae import input_pipeline
except ImportError:
    import input_pipeline  # type: ignore[no-redef]

FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a script, so that tests can import this file beside train.py."""
    flags.DEFINE_string('dataset', 'fashion_mnist', 'fashion_mnist or mnist.')
    flags.DEFINE_string('data_dir', None, 'Folder with the four IDX files.')
    flags.DEFINE_integer('num_epochs', 30, 'Number of epochs.')
    flags.DEFINE_integer('batch_size', 128, 'Batch size.')
    flags.DEFINE_float('learning_rate', 1e-3, 'Adam learning rate.')
    flags.DEFINE_integer('iwae_samples', 100, 'k of the IWAE estimate after the last epoch.')
    flags.DEFINE_integer('num_train_examples', 0, 'Use only the first N training images.')
    flags.DEFINE_integer('seed', 0, 'Seed.')


def init_params(key, latents=20, hidden=500, pixels=784):
    lecun = jax.nn.initializers.lecun_normal()
    shapes = {'enc_hidden': (pixels, hidden), 'enc_mean': (hidden, latents),
              'enc_logvar': (hidden, latents), 'dec_hidden': (latents, hidden),
              'dec_logits': (hidden, pixels)}
    keys = jax.random.split(key, len(shapes))
    return {name: {'w': lecun(k, shape), 'b': jnp.zeros(shape[1])}
            for k, (name, shape) in zip(keys, shapes.items())}


def dense(p, x):
    return x @ p['w'] + p['b'][None, :]


def encode(params, x):
    h = jax.nn.relu(dense(params['enc_hidden'], x))
    return dense(params['enc_mean'], h), dense(params['enc_logvar'], h)


def decode(params, z):
    return dense(params['dec_logits'], jax.nn.relu(dense(params['dec_hidden'], z)))


def log_bernoulli(logits, x):
    return jnp.sum(x * jax.nn.log_sigmoid(logits) + (1 - x) * jax.nn.log_sigmoid(-logits), -1)


def neg_elbo(params, x, key):
    """Per image ``(batch,)``: -E_q log p(x|z) + KL(q(z|x) || N(0, I)), one draw of z."""
    mean, logvar = encode(params, x)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1 - logvar, -1)
    return -log_bernoulli(decode(params, z), x) + kl


def make_train_step(tx):
    @jax.jit
    def train_step(params, opt_state, image, key):
        x = image.astype(jnp.float32)
        loss, grads = jax.value_and_grad(lambda p: jnp.mean(neg_elbo(p, x, key)))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return train_step


@jax.jit
def eval_sum(params, image, key):
    return jnp.sum(neg_elbo(params, image.astype(jnp.float32), key))


def iwae_sum(params, image, key, k):
    """Sum over the images of the k-sample importance-weighted bound on log p(x)."""
    x = image.astype(jnp.float32)
    mean, logvar = encode(params, x)
    eps = jax.random.normal(key, (k,) + mean.shape)
    z = mean[None] + jnp.exp(0.5 * logvar)[None] * eps
    logits = decode(params, z.reshape((-1, z.shape[-1]))).reshape((k,) + x.shape)
    log_n = lambda v: -0.5 * jnp.sum(v**2 + math.log(2 * math.pi), -1)
    log_w = (log_bernoulli(logits, x[None]) + log_n(z) - log_n(eps)
             + 0.5 * jnp.sum(logvar, -1)[None])
    return jnp.sum(jax.nn.logsumexp(log_w, axis=0) - math.log(k))


iwae_sum_jit = jax.jit(iwae_sum, static_argnums=3)


def main(argv):
    del argv
    train_ds, test_ds, _ = input_pipeline.get_datasets(
        FLAGS.dataset, FLAGS.data_dir, FLAGS.num_train_examples or None)
    init_key, train_key, eval_key = jax.random.split(jax.random.PRNGKey(FLAGS.seed), 3)
    params = init_params(init_key)
    tx = optax.adam(FLAGS.learning_rate)
    opt_state = tx.init(params)
    train_step = make_train_step(tx)
    n, bs = len(train_ds['image']), FLAGS.batch_size
    steps = n // bs
    test = test_ds['image']
    for epoch in range(1, FLAGS.num_epochs + 1):
        start = time.time()
        perms = onp.random.RandomState([FLAGS.seed, epoch]).permutation(n)
        perms = perms[:steps * bs].reshape((steps, bs))
        losses = []
        for i, perm in enumerate(perms):
            key = jax.random.fold_in(train_key, (epoch - 1) * steps + i)
            params, opt_state, loss = train_step(params, opt_state, train_ds['image'][perm], key)
            losses.append(loss)
        sums = [eval_sum(params, test[i:i + 1000], jax.random.fold_in(eval_key, i))
                for i in range(0, len(test), 1000)]
        row = {'impl': 'plain_jax_optax', 'epoch': epoch,
               'train_loss': float(onp.mean(jax.device_get(losses))),
               'test_loss': float(sum(jax.device_get(sums))) / len(test),
               'epoch_seconds': time.time() - start}
        print(json.dumps(row), flush=True)
    if FLAGS.iwae_samples:
        start, k = time.time(), FLAGS.iwae_samples
        size = max(1, 20_000 // k)
        sums = [iwae_sum_jit(params, test[i:i + size], jax.random.fold_in(eval_key, i), k)
                for i in range(0, len(test), size)]
        print(json.dumps({'impl': 'plain_jax_optax', 'iwae_samples': k,
                          'test_iwae_nll': -float(sum(jax.device_get(sums))) / len(test),
                          'iwae_seconds': time.time() - start}), flush=True)


if __name__ == '__main__':
    define_flags()
    app.run(main)
