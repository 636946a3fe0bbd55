"""The example's DCGAN in plain JAX + optax, for the comparison table in README.md.

Same models (models.Generator and models.Discriminator written out with jax.lax: the same
layers, LeCun-normal kernels, zero biases, BatchNorm with momentum 0.9 and eps 1e-5), same
losses, same Adam (``optax.adam(2e-4, b1=0.5)`` is the update of ``optim.Adam``), same
alternating step, same moving average of the generator (sampled and scored), same data
order and noise as train.py; only flaxen is left out of the training. The samples are
scored by the same classifier (its checkpoint read as a plain
dict) with the same quality.py, so the numbers are comparable. Prints one JSON line per
epoch.

    python examples/gan/plain_jax_baseline.py --num_epochs=5
"""

import glob
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as onp
import optax
from absl import app, flags
from jax import lax

try:
    from examples.gan import input_pipeline, quality
except ImportError:
    import input_pipeline  # type: ignore[no-redef]
    import quality  # type: ignore[no-redef]

FLAGS = flags.FLAGS
LATENT_DIM = 64
NUM_CLASSES = 10
_DN = ('NHWC', 'HWIO', 'NHWC')


def define_flags():
    """Defined only when run as a script, so that tests can import this file beside train.py."""
    flags.DEFINE_float('learning_rate', 2e-4, 'Adam learning rate.')
    flags.DEFINE_float('beta1', 0.5, 'Adam beta1.')
    flags.DEFINE_integer('batch_size', 64, 'Batch size.')
    flags.DEFINE_integer('num_epochs', 20, 'Number of epochs.')
    flags.DEFINE_integer('g_features', 32, 'Generator width.')
    flags.DEFINE_integer('d_features', 32, 'Discriminator width.')
    flags.DEFINE_bool('conditional', True, 'Class-conditional generator and discriminator.')
    flags.DEFINE_float('ema_decay', 0.999, 'Decay of the moving average of the generator.')
    flags.DEFINE_string('dataset', 'fashion_mnist', 'fashion_mnist or mnist.')
    flags.DEFINE_string('data_dir', None, 'Folder with the four IDX files.')
    flags.DEFINE_string('classifier_dir', '/tmp/flaxen_gan_classifier',
                        'Output folder of train_classifier.py (empty: no scores).')
    flags.DEFINE_integer('num_eval_samples', 10000, 'Generated images scored per epoch.')
    flags.DEFINE_integer('seed', 0, 'Seed.')


def init_params(key, g_features=32, d_features=32, num_classes=NUM_CLASSES):
    """``(g_params, g_state, d_params)`` with the shapes of the flaxen models
    (``num_classes=0``: unconditional, no label input and no projection)."""
    k = jax.random.split(key, 7)
    lecun = jax.nn.initializers.lecun_normal()
    f = g_features
    bn = lambda n: {'scale': jnp.ones(n), 'bias': jnp.zeros(n)}  # noqa: E731
    g = {'dense': lecun(k[0], (LATENT_DIM + num_classes, 7 * 7 * 2 * f)),
         'bn1': bn(7 * 7 * 2 * f),
         'up1': lecun(k[1], (3, 3, 2 * f, 4 * f)), 'bn2': bn(f),
         'up2': {'w': lecun(k[2], (3, 3, f, 4)), 'b': jnp.zeros(4)}}
    g_state = {name: {'mean': jnp.zeros(n), 'var': jnp.ones(n)}
               for name, n in (('bn1', 7 * 7 * 2 * f), ('bn2', f))}
    f = d_features
    d = {'conv1': {'w': lecun(k[3], (4, 4, 1, f)), 'b': jnp.zeros(f)},
         'conv2': {'w': lecun(k[4], (4, 4, f, 2 * f)), 'b': jnp.zeros(2 * f)},
         'dense': {'w': lecun(k[5], (7 * 7 * 2 * f, 1)), 'b': jnp.zeros(1)}}
    if num_classes:  # rows of unit-variance / fan-in, as nn.Embed's default initializer
        d['projection'] = jax.random.normal(k[6], (num_classes, 7 * 7 * 2 * f)) / jnp.sqrt(
            7 * 7 * 2 * f)
    return g, g_state, d


def last_axis(v, ndim):
    """A per-feature vector shaped to broadcast against a rank-``ndim`` array."""
    return v.reshape((1,) * (ndim - 1) + (-1,))


def batch_norm(x, p, s, train, momentum=0.9, eps=1e-5):
    """Returns ``(y, new_state)``; statistics over all axes but the last."""
    axes = tuple(range(x.ndim - 1))
    if train:
        mean = jnp.mean(x, axes)
        var = jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mean), 0.0)
        s = {'mean': momentum * s['mean'] + (1 - momentum) * mean,
             'var': momentum * s['var'] + (1 - momentum) * var}
    else:
        mean, var = s['mean'], s['var']
    mul = lax.rsqrt(var + eps) * p['scale']
    return x * last_axis(mul, x.ndim) + last_axis(p['bias'] - mean * mul, x.ndim), s


def subpixel_upsample(x, w):
    """A 3x3 convolution with ``w`` (skipped if None) to ``4 * c`` channels, then each
    2x2 output cell takes its four pixels from the four channel blocks."""
    if w is not None:
        x = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=_DN)
    b, h, wd, c4 = x.shape
    x = x.reshape((b, h, wd, 2, 2, c4 // 4)).transpose((0, 1, 3, 2, 4, 5))
    return x.reshape((b, 2 * h, 2 * wd, c4 // 4))


def generator(g, g_state, z, labels, train=True):
    """``(images (B, 28, 28, 1) in [-1, 1], new_state)``; conditional when the dense kernel
    has rows for the one-hot label."""
    num_classes = g['dense'].shape[0] - LATENT_DIM
    if num_classes:
        z = jnp.concatenate([z, jax.nn.one_hot(labels, num_classes, dtype=z.dtype)], -1)
    x, s1 = batch_norm(z @ g['dense'], g['bn1'], g_state['bn1'], train)
    x = jax.nn.relu(x).reshape((z.shape[0], 7, 7, -1))
    x = subpixel_upsample(x, g['up1'])
    x, s2 = batch_norm(x, g['bn2'], g_state['bn2'], train)
    x = lax.conv_general_dilated(jax.nn.relu(x), g['up2']['w'], (1, 1), 'SAME',
                                 dimension_numbers=_DN)
    x = subpixel_upsample(x + last_axis(g['up2']['b'], 4), None)
    return jnp.tanh(x), {'bn1': s1, 'bn2': s2}


def discriminator(d, x, labels):
    for name in ('conv1', 'conv2'):
        x = lax.conv_general_dilated(x, d[name]['w'], (2, 2), 'SAME', dimension_numbers=_DN)
        x = jax.nn.leaky_relu(x + last_axis(d[name]['b'], 4), 0.2)
    x = x.reshape((x.shape[0], -1))
    logits = (x @ d['dense']['w'])[:, 0] + d['dense']['b'][0]
    if 'projection' in d:  # projection discriminator: + <embedding[label], features>
        logits = logits + jnp.sum(d['projection'][labels] * x, axis=-1)
    return logits


def make_train_step(tx):
    @jax.jit
    def train_step(g, d, g_state, g_opt, d_opt, batch):
        fake, g_vjp, g_state = jax.vjp(
            lambda g: generator(g, g_state, batch['noise'], batch['label']), g, has_aux=True)

        def d_loss_fn(d):
            real_logits = discriminator(d, batch['image'], batch['label'])
            fake_logits = discriminator(d, lax.stop_gradient(fake), batch['label'])
            loss = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
            return loss, (real_logits, fake_logits)

        (d_loss, (real_logits, fake_logits)), d_grad = jax.value_and_grad(
            d_loss_fn, has_aux=True)(d)
        updates, d_opt = tx.update(d_grad, d_opt, d)
        d = optax.apply_updates(d, updates)
        g_loss, d_fake = jax.value_and_grad(
            lambda x: jnp.mean(jax.nn.softplus(-discriminator(d, x, batch['label']))))(fake)
        (g_grad,) = g_vjp(d_fake)
        updates, g_opt = tx.update(g_grad, g_opt, g)
        g = optax.apply_updates(g, updates)
        return g, d, g_state, g_opt, d_opt, {
            'd_loss': d_loss, 'g_loss': g_loss, 'd_real': jnp.mean(jax.nn.sigmoid(real_logits)),
            'd_fake': jnp.mean(jax.nn.sigmoid(fake_logits))}
    return train_step


@jax.jit
def update_ema(ema, g, g_state, step, decay):
    """``(g, g_state)`` averaged: decay ``min(decay, (1 + step) / (10 + step))``."""
    step = jnp.asarray(step, jnp.float32)
    d = jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda e, x: d * e + (1.0 - d) * x, ema, (g, g_state))


def classifier(c, x):
    """The MNIST example's CNN, plain: ``(features (B, 256), log_probs (B, 10))``."""
    for name in ('Conv_0', 'Conv_1'):
        x = lax.conv_general_dilated(x, c[name]['kernel'], (1, 1), 'SAME', dimension_numbers=_DN)
        x = jax.nn.relu(x + last_axis(c[name]['bias'], 4))
        x = lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID') / 4.0
    h = x.reshape((x.shape[0], -1)) @ c['Dense_2']['kernel']
    h = jax.nn.relu(h + last_axis(c['Dense_2']['bias'], 2))
    return h, jax.nn.log_softmax(h @ c['Dense_3']['kernel'] + last_axis(c['Dense_3']['bias'], 2))


@jax.jit
def generated_sums(g, g_state, c, z, labels):
    images, _ = generator(g, g_state, z, labels, train=False)
    return quality.batch_sums(*classifier(c, (images + 1.0) * 0.5))


@jax.jit
def real_sums(c, images):
    return quality.batch_sums(*classifier(c, images))


def main(argv):
    del argv
    from flaxen.training import checkpoints  # only to read the classifier's file

    train_ds, test_ds = input_pipeline.get_datasets(FLAGS.dataset, FLAGS.data_dir)
    c = reference = None

    def load_classifier():
        # Read when its checkpoint appears, so that this can start beside train_classifier.py.
        path = os.path.join(FLAGS.classifier_dir, 'checkpoints')
        if not (FLAGS.classifier_dir and glob.glob(os.path.join(path, 'checkpoint_*'))):
            return None, None
        c = jax.tree.map(jnp.asarray, checkpoints.restore_checkpoint(path, None)['params'])
        return c, quality.add_sums([real_sums(c, test_ds['image'][i:i + 1000])
                                    for i in range(0, len(test_ds['image']), 1000)])

    g, g_state, d = init_params(jax.random.PRNGKey(FLAGS.seed), FLAGS.g_features,
                                FLAGS.d_features, NUM_CLASSES if FLAGS.conditional else 0)
    tx = optax.adam(FLAGS.learning_rate, b1=FLAGS.beta1)
    g_opt, d_opt = tx.init(g), tx.init(d)
    ema = (g, g_state)
    train_step = make_train_step(tx)
    n, bs = len(train_ds['image']), FLAGS.batch_size
    steps = n // bs
    eval_noise = onp.random.RandomState([FLAGS.seed, 1_000_000]).normal(
        size=(FLAGS.num_eval_samples, LATENT_DIM)).astype(onp.float32)
    eval_labels = (onp.arange(FLAGS.num_eval_samples) % NUM_CLASSES).astype(onp.int32)
    for epoch in range(1, FLAGS.num_epochs + 1):
        start = time.time()
        rng = onp.random.RandomState([FLAGS.seed, epoch])
        perms = rng.permutation(n)[:steps * bs].reshape((steps, bs))
        noise = rng.normal(size=(steps, bs, LATENT_DIM)).astype(onp.float32)
        ms = []
        for i in range(steps):
            batch = {'image': train_ds['image'][perms[i]] * 2.0 - 1.0,
                     'label': train_ds['label'][perms[i]], 'noise': noise[i]}
            g, d, g_state, g_opt, d_opt, m = train_step(g, d, g_state, g_opt, d_opt, batch)
            ema = update_ema(ema, g, g_state, (epoch - 1) * steps + i + 1, FLAGS.ema_decay)
            ms.append(m)
        ms = jax.device_get(ms)
        row = {'impl': 'plain_jax_optax', 'epoch': epoch, 'epoch_seconds': time.time() - start}
        row.update({k: float(onp.mean([m[k] for m in ms])) for k in ms[0]})
        if c is None:
            c, reference = load_classifier()
        if c is not None:
            sums = quality.add_sums([generated_sums(*ema, c, eval_noise[i:i + 1000],
                                                    eval_labels[i:i + 1000])
                                     for i in range(0, len(eval_noise), 1000)])
            row['fid'], row['inception_score'] = quality.fid_and_is(sums, reference)
        print(json.dumps(row), flush=True)


if __name__ == '__main__':
    define_flags()
    app.run(main)
