"""Times one GAN train step with three ways to upsample in the generator (for the README).

    python examples/gan/bench_upsampling.py --features=32 --batch_size=64 --steps=20

Prints wall and CPU (process) milliseconds per step of ``train.train_step`` for:
``conv_transpose`` (4x4 stride-2 ``nn.ConvTranspose``, the DCGAN paper's layer), ``nearest``
(nearest-neighbour x2, then a 3x3 ``nn.Conv``) and ``subpixel`` (the 3x3 ``nn.Conv`` to
``4 * features`` channels and ``models.depth_to_space`` that ``models.Generator`` uses).
The discriminator, losses and optimizers are those of ``train.py``. CPU time counts every
thread, so it does not depend on what else runs on the machine; wall time does.
"""

import time

import jax
import jax.numpy as jnp
import numpy as onp
from absl import app, flags

from flaxen import nn

try:
    from examples.gan import models, train
except ImportError:
    import models  # type: ignore[no-redef]
    import train  # type: ignore[no-redef]

FLAGS = flags.FLAGS
KINDS = ('conv_transpose', 'nearest', 'subpixel')


def upsample(x, features, kind, bias):
    """``(b, h, w, c)`` to ``(b, 2h, 2w, features)`` by one of ``KINDS``."""
    if kind == 'conv_transpose':
        return nn.ConvTranspose(x, features=features, kernel_size=(4, 4), strides=(2, 2),
                                bias=bias)
    if kind == 'nearest':
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return nn.Conv(x, features=features, kernel_size=(3, 3), bias=bias)
    x = nn.Conv(x, features=4 * features, kernel_size=(3, 3), bias=bias)
    return models.depth_to_space(x, features)


class Generator(nn.Module):
    """``models.Generator`` (class-conditional) with the upsampling chosen by ``kind``."""

    def apply(self, z, labels, train=True, features=32, num_classes=models.NUM_CLASSES,
              kind='subpixel'):
        bn = nn.BatchNorm.partial(use_running_average=not train, momentum=0.9)
        if num_classes:
            z = jnp.concatenate([z, jax.nn.one_hot(labels, num_classes, dtype=z.dtype)], -1)
        x = nn.relu(bn(nn.Dense(z, features=7 * 7 * 2 * features, bias=False)))
        x = x.reshape((z.shape[0], 7, 7, 2 * features))
        x = nn.relu(bn(upsample(x, features, kind, bias=False)))
        return jnp.tanh(upsample(x, 1, kind, bias=True))


def time_step(kind, features, batch_size, steps):
    """``(wall_ms, cpu_ms)`` per train step, after one step that compiles."""
    # The generator is passed in: swapping models.Generator under the jitted
    # train.create_models would return the first kind's generator from jit's cache.
    generator, g_state, discriminator = train.create_models(
        jax.random.PRNGKey(0), features, features, True, Generator.partial(kind=kind))
    g_opt, d_opt = train.create_optimizers(generator, discriminator, 2e-4, 0.5)
    rng = onp.random.RandomState(0)
    batch = {'image': rng.uniform(-1, 1, (batch_size, 28, 28, 1)).astype(onp.float32),
             'label': rng.randint(0, models.NUM_CLASSES, batch_size).astype(onp.int32),
             'noise': rng.normal(size=(batch_size, models.LATENT_DIM)).astype(onp.float32)}
    out = jax.block_until_ready(train.train_step(g_opt, d_opt, g_state, batch))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        out = train.train_step(*out[:3], batch)
    jax.block_until_ready(out)
    return ((time.perf_counter() - wall) * 1e3 / steps,
            (time.process_time() - cpu) * 1e3 / steps)


def main(argv):
    del argv
    for kind in KINDS * 2:  # twice, in turn, to see the noise
        wall, cpu = time_step(kind, FLAGS.features, FLAGS.batch_size, FLAGS.steps)
        print(f'{kind:15s} features {FLAGS.features} batch {FLAGS.batch_size}: '
              f'{wall:7.1f} ms/step wall, {cpu:7.1f} ms/step CPU', flush=True)


if __name__ == '__main__':
    flags.DEFINE_integer('features', 32, 'Generator and discriminator width.')
    flags.DEFINE_integer('batch_size', 64, 'Batch size.')
    flags.DEFINE_integer('steps', 20, 'Timed steps per variant.')
    app.run(main)
