"""The example's U-Net in plain JAX + optax, for the comparison table in README.md.

Same model (a full-resolution stem: 3x3 conv with bias and ReLU, 2x2 max pooling, 3x3 conv
without bias -> GroupNorm -> ReLU, 2x2 max pooling; 4x4 pixel cells as channels for the head;
per level: two times 3x3 conv without bias ->
GroupNorm of 4 channels per group -> ReLU; 2x2 max pooling down; at the bottom, the mean over
positions through a 1x1 conv and ReLU added everywhere; 2x2 stride-2 transposed convolution up,
skip connections joined by concatenation; the cell's pixels joined to the decoder's output,
a 1x1 conv with ReLU and a 1x1 conv to 11 logits per pixel; LeCun-normal kernels, zero biases),
same loss (mean per-pixel cross-entropy), same optimizer (Adam, ``optax.scale_by_adam``, which
``optim.Adam`` runs, with the same linear warm-up and half-cosine learning-rate decay),
same canvases, batch size and per-epoch shuffling as train.py, and the same test metrics; only
flaxen is left out. Prints one JSON line per epoch (wall time of training plus evaluation).

    python examples/segmentation/plain_jax_baseline.py --num_epochs=4
    python examples/segmentation/plain_jax_baseline.py --paired_rounds=5   # speed, side by side
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as onp
import optax
from absl import app, flags
from jax import lax

try:
    from examples.segmentation import input_pipeline
except ImportError:
    import input_pipeline  # type: ignore[no-redef]

FLAGS = flags.FLAGS
FEATURES = (32, 64, 128)
STEM = 16
PATCH = 4
HEAD = 64
GROUP_SIZE = 4
NUM_CLASSES = 11
_DN = ('NHWC', 'HWIO', 'NHWC')


def define_flags():
    """Defined only when run as a script, so that tests can import this file beside train.py.
    Flags that train.py already defined (in ``--paired_rounds`` mode) are left as they are."""
    for define, name, default, text in (
            (flags.DEFINE_float, 'learning_rate', 8e-3, 'Peak Adam learning rate.'),
            (flags.DEFINE_float, 'warmup_epochs', 0.4, 'Epochs of linear warm-up.'),
            (flags.DEFINE_integer, 'batch_size', 16, 'Batch size.'),
            (flags.DEFINE_integer, 'num_epochs', 4, 'Number of epochs.'),
            (flags.DEFINE_string, 'dataset', 'fashion_mnist', 'fashion_mnist or mnist.'),
            (flags.DEFINE_string, 'data_dir', None, 'Folder with the four IDX files.'),
            (flags.DEFINE_string, 'cache_dir', None, 'Canvas cache folder.'),
            (flags.DEFINE_integer, 'num_train_canvases', 64000, 'Training canvases.'),
            (flags.DEFINE_integer, 'num_test_canvases', 2000, 'Test canvases.'),
            (flags.DEFINE_integer, 'data_seed', 0, 'Seed of the canvas generator.'),
            (flags.DEFINE_integer, 'seed', 0, 'Seed.'),
            (flags.DEFINE_integer, 'paired_rounds', 0,
             "Instead of training: time --paired_steps steps of train.py's flaxen step and "
             "of this file's step, alternately, this many rounds."),
            (flags.DEFINE_integer, 'paired_steps', 20, 'Steps per implementation and round.')):
        if name not in FLAGS:
            define(name, default, text)


def import_train():
    """train.py (flaxen), only for ``--paired_rounds``."""
    try:
        from examples.segmentation import train
    except ImportError:
        import train  # type: ignore[no-redef]
    return train


def init_params(key, features=FEATURES):
    """Parameters named like the flaxen model's (``down_0``, ``bottom``, ``upsample_0``...)."""
    lecun = jax.nn.initializers.lecun_normal()
    keys = iter(jax.random.split(key, 64))

    def block(c_in, c_out):
        return {'conv0': lecun(next(keys), (3, 3, c_in, c_out)),
                'gn0': {'scale': jnp.ones(c_out), 'bias': jnp.zeros(c_out)},
                'conv1': lecun(next(keys), (3, 3, c_out, c_out)),
                'gn1': {'scale': jnp.ones(c_out), 'bias': jnp.zeros(c_out)}}

    def dense(c_in, c_out):  # a 1x1 convolution
        return {'w': lecun(next(keys), (1, 1, c_in, c_out)), 'b': jnp.zeros(c_out)}

    params = {'stem': {'conv0': {'w': lecun(next(keys), (3, 3, 1, STEM)), 'b': jnp.zeros(STEM)},
                       'conv1': lecun(next(keys), (3, 3, STEM, 2 * STEM)),
                       'gn1': {'scale': jnp.ones(2 * STEM), 'bias': jnp.zeros(2 * STEM)}}}
    c = 2 * STEM
    for i, f in enumerate(features[:-1]):
        params[f'down_{i}'], c = block(c, f), f
    params['bottom'], c = block(c, features[-1]), features[-1]
    params['context'] = dense(c, c)
    for i in reversed(range(len(features) - 1)):
        params[f'upsample_{i}'] = {'w': lecun(next(keys), (2, 2, c, features[i])),
                                   'b': jnp.zeros(features[i])}
        params[f'up_{i}'], c = block(2 * features[i], features[i]), features[i]
    params['head'] = dense(c + PATCH * PATCH, HEAD)
    params['logits'] = dense(HEAD, NUM_CLASSES * PATCH * PATCH)
    return params


def from_flaxen(params):
    """The flaxen U-Net's parameters (``UNet.params``) under this file's names."""
    def block(b):
        return {'conv0': b['Conv_0']['kernel'], 'gn0': dict(b['GroupNorm_1']),
                'conv1': b['Conv_2']['kernel'], 'gn1': dict(b['GroupNorm_3'])}

    out = {}
    for name, p in params.items():
        if name == 'stem':
            out[name] = {'conv0': {'w': p['Conv_0']['kernel'], 'b': p['Conv_0']['bias']},
                         'conv1': p['Conv_1']['kernel'], 'gn1': dict(p['GroupNorm_2'])}
        elif name.startswith(('upsample', 'context', 'head', 'logits')):
            out[name] = {'w': p['kernel'], 'b': p['bias']}
        else:
            out[name] = block(p)
    return out


def group_norm(x, p, eps=1e-6):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, c // GROUP_SIZE, GROUP_SIZE)
    mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
    var = jnp.mean(jnp.square(g), axis=(1, 2, 4), keepdims=True) - jnp.square(mean)
    y = ((g - mean) * lax.rsqrt(jnp.maximum(var, 0.0) + eps)).reshape(x.shape)
    return y * p['scale'].reshape(1, 1, 1, c) + p['bias'].reshape(1, 1, 1, c)


def conv_block(x, p):
    for i in range(2):
        x = lax.conv_general_dilated(x, p[f'conv{i}'], (1, 1), 'SAME', dimension_numbers=_DN)
        x = jax.nn.relu(group_norm(x, p[f'gn{i}']))
    return x


def conv1x1(x, p):
    y = lax.conv_general_dilated(x, p['w'], (1, 1), 'SAME', dimension_numbers=_DN)
    return y + p['b'].reshape(1, 1, 1, -1)


def max_pool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')


def stem(x, p):
    """Full resolution to one position per 4x4 cell (models.Stem)."""
    x = lax.conv_general_dilated(x, p['conv0']['w'], (1, 1), 'SAME', dimension_numbers=_DN)
    x = max_pool(jax.nn.relu(x + p['conv0']['b'].reshape(1, 1, 1, -1)))
    x = lax.conv_general_dilated(x, p['conv1'], (1, 1), 'SAME', dimension_numbers=_DN)
    return max_pool(jax.nn.relu(group_norm(x, p['gn1'])))


def forward(params, x, levels=len(FEATURES)):
    """``x``: float32 ``(n, 64, 64, 1)``; returns logits ``(n, 64, 64, 11)``."""
    n, h, w, _ = x.shape  # 4x4 pixel cells out (models.UNet's patch)
    cells = x.reshape((n, h // PATCH, PATCH, w // PATCH, PATCH, 1)).transpose((0, 1, 3, 2, 4, 5))
    pixels = cells.reshape((n, h // PATCH, w // PATCH, PATCH * PATCH))
    x = stem(x, params['stem'])
    skips = []
    for i in range(levels - 1):
        x = conv_block(x, params[f'down_{i}'])
        skips.append(x)
        x = max_pool(x)
    x = conv_block(x, params['bottom'])
    x = x + jax.nn.relu(conv1x1(jnp.mean(x, axis=(1, 2), keepdims=True), params['context']))
    for i in reversed(range(levels - 1)):
        up = params[f'upsample_{i}']
        x = lax.conv_transpose(x, up['w'], (2, 2), 'SAME', dimension_numbers=_DN)
        x = x + up['b'].reshape(1, 1, 1, -1)
        x = conv_block(jnp.concatenate([x, skips[i]], axis=-1), params[f'up_{i}'])
    x = jax.nn.relu(conv1x1(jnp.concatenate([x, pixels], axis=-1), params['head']))
    x = conv1x1(x, params['logits']).reshape(
        (n, h // PATCH, w // PATCH, PATCH, PATCH, NUM_CLASSES))
    return x.transpose((0, 1, 3, 2, 4, 5)).reshape((n, h, w, NUM_CLASSES))


def loss_fn(params, images, labels):
    logits = forward(params, (images.astype(jnp.float32) / 255.0)[..., None])
    log_probs = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_probs, labels.astype(jnp.int32)[..., None], axis=-1)
    return jnp.mean(nll), logits


def make_train_step(base_learning_rate, total_steps, warmup_steps=0):
    """Adam (``optax.scale_by_adam``) at a learning rate that rises linearly from 0 to
    ``base_learning_rate`` over ``warmup_steps``, then decays to 0 along a half cosine by
    ``total_steps``."""
    tx = optax.scale_by_adam()

    @jax.jit
    def train_step(params, opt_state, batch):
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch['image'], batch['label'])
        step = opt_state.count.astype(jnp.float32)
        decay = jnp.clip((step - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
        lr = base_learning_rate * jnp.where(
            step < warmup_steps, step / max(warmup_steps, 1),
            jnp.cos(decay * jnp.pi) * 0.5 + 0.5)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'].astype(jnp.int32))
        return params, opt_state, {'loss': loss, 'pixel_accuracy': accuracy}
    return tx, train_step


@jax.jit
def eval_step(params, batch):
    loss, logits = loss_fn(params, batch['image'], batch['label'])
    pred = jnp.argmax(logits, -1).astype(jnp.int32)
    index = batch['label'].astype(jnp.int32) * NUM_CLASSES + pred
    confusion = jnp.bincount(index.ravel(), length=NUM_CLASSES * NUM_CLASSES)
    return loss * batch['label'].size, confusion.reshape(NUM_CLASSES, NUM_CLASSES)


def evaluate(params, test_ds, size=200):
    n = len(test_ds['label'])
    sums = jax.device_get([eval_step(params, {k: v[i:i + size] for k, v in test_ds.items()})
                           for i in range(0, n, size)])
    confusion = sum(onp.asarray(c, onp.float64) for _, c in sums)
    inter = onp.diag(confusion)
    iou = inter / (confusion.sum(0) + confusion.sum(1) - inter)
    return {'test_loss': sum(float(s) for s, _ in sums) / confusion.sum(),
            'test_pixel_accuracy': float(inter.sum() / confusion.sum()),
            'test_mean_iou': float(onp.mean(iou)), 'test_iou': iou.tolist()}


def paired_timing(train_ds, rounds, steps, batch_size, learning_rate):
    """Milliseconds per training step of both implementations (wall, and this process's CPU
    time), measured alternately on the same batches from the same initial parameters (so both
    see the same machine load); the one that goes first alternates from round to round."""
    train = import_train()
    model = train.create_model(jax.random.PRNGKey(0))
    optimizer = train.create_optimizer(model, learning_rate)
    params = from_flaxen(model.params)
    tx, plain_step = make_train_step(learning_rate, 1000 * steps, 0)
    opt_state = tx.init(params)
    batches = [{k: v[i * batch_size:(i + 1) * batch_size] for k, v in train_ds.items()}
               for i in range(steps)]
    learning_rate_fn = train.create_learning_rate_fn(learning_rate, steps, 1000, 0)
    optimizer, _ = train.train_step(optimizer, batches[0], learning_rate_fn)  # compile both
    params, opt_state, _ = plain_step(params, opt_state, batches[0])
    times: dict[str, list[float]] = {'flaxen': [], 'plain_jax_optax': []}
    cpu: dict[str, list[float]] = {'flaxen': [], 'plain_jax_optax': []}
    def run_flaxen():
        nonlocal optimizer
        for batch in batches:
            optimizer, m = train.train_step(optimizer, batch, learning_rate_fn)
        jax.block_until_ready(m)

    def run_plain():
        nonlocal params, opt_state
        for batch in batches:
            params, opt_state, m = plain_step(params, opt_state, batch)
        jax.block_until_ready(m)

    order = [('flaxen', run_flaxen), ('plain_jax_optax', run_plain)]
    for r in range(rounds):
        for name, run in order if r % 2 == 0 else order[::-1]:  # each goes first in turn
            start, cpu_start = time.time(), time.process_time()
            run()
            times[name].append((time.time() - start) / steps * 1000)
            cpu[name].append((time.process_time() - cpu_start) / steps * 1000)
        print(json.dumps({'round': r, **{k: v[-1] for k, v in times.items()},
                          **{f'{k}_cpu': v[-1] for k, v in cpu.items()},
                          'load': os.getloadavg()[0]}), flush=True)
    ratios = [a / b for a, b in zip(times['flaxen'], times['plain_jax_optax'])]
    cpu_ratios = [a / b for a, b in zip(cpu['flaxen'], cpu['plain_jax_optax'])]
    print(json.dumps({'median_ms_per_step': {k: float(onp.median(v)) for k, v in times.items()},
                      'median_cpu_ms_per_step': {k: float(onp.median(v))
                                                 for k, v in cpu.items()},
                      'median_ratio_flaxen_over_plain': float(onp.median(ratios)),
                      'median_cpu_ratio_flaxen_over_plain': float(onp.median(cpu_ratios)),
                      'ratios': ratios, 'cpu_ratios': cpu_ratios}), flush=True)


def main(argv):
    del argv
    train_ds, test_ds = input_pipeline.get_datasets(
        FLAGS.dataset, FLAGS.data_dir, FLAGS.num_train_canvases, FLAGS.num_test_canvases,
        FLAGS.data_seed, cache_dir=FLAGS.cache_dir)
    if FLAGS.paired_rounds:
        paired_timing(train_ds, FLAGS.paired_rounds, FLAGS.paired_steps, FLAGS.batch_size,
                      FLAGS.learning_rate)
        return
    params = init_params(jax.random.PRNGKey(FLAGS.seed))
    steps = len(train_ds['label']) // FLAGS.batch_size
    tx, train_step = make_train_step(FLAGS.learning_rate, FLAGS.num_epochs * steps,
                                     int(round(FLAGS.warmup_epochs * steps)))
    opt_state = tx.init(params)
    for epoch in range(1, FLAGS.num_epochs + 1):
        start = time.time()
        perms = onp.random.RandomState([FLAGS.seed, epoch]).permutation(len(train_ds['label']))
        perms = perms[:steps * FLAGS.batch_size].reshape((steps, FLAGS.batch_size))
        batch_metrics = []
        for perm in perms:
            batch = {k: v[perm] for k, v in train_ds.items()}
            params, opt_state, m = train_step(params, opt_state, batch)
            batch_metrics.append(m)
        batch_metrics = jax.device_get(batch_metrics)
        train_seconds = time.time() - start
        print(json.dumps({
            'impl': 'plain_jax_optax', 'epoch': epoch, 'train_seconds': train_seconds,
            'train_loss': float(onp.mean([m['loss'] for m in batch_metrics])),
            'train_pixel_accuracy': float(onp.mean([m['pixel_accuracy'] for m in batch_metrics])),
            **evaluate(params, test_ds), 'epoch_seconds': time.time() - start}), flush=True)


if __name__ == '__main__':
    if any(arg.startswith('--paired_rounds') for arg in sys.argv):
        import_train()  # defines the flags that both files share
    define_flags()
    app.run(main)
