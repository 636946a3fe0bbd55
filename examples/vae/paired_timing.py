"""Times the training step of train.py against plain_jax_baseline.py, interleaved.

Both steps are compiled first, then run in alternating rounds on the same batches, so that
both see the same machine load; prints the median milliseconds per step of each and their
ratio as one JSON line. Uses train.py's flags (--batch_size, --dataset, --data_dir...).

    python examples/vae/paired_timing.py --rounds=6 --steps_per_round=100
"""

import json
import statistics
import time

import jax
import optax
from absl import app, flags

try:
    from examples.vae import input_pipeline, plain_jax_baseline, train
except ImportError:
    import input_pipeline  # type: ignore[no-redef]
    import plain_jax_baseline  # type: ignore[no-redef]
    import train  # type: ignore[no-redef]

flags.DEFINE_integer('rounds', 6, 'Rounds per implementation (alternating).')
flags.DEFINE_integer('steps_per_round', 100, 'Training steps per round.')
FLAGS = flags.FLAGS


def main(argv):
    del argv
    train_ds, _, _ = input_pipeline.get_datasets(FLAGS.dataset, FLAGS.data_dir)
    n, bs = FLAGS.steps_per_round, FLAGS.batch_size
    batches = [train_ds['image'][i * bs:(i + 1) * bs] for i in range(n)]
    key = jax.random.PRNGKey(0)

    optimizer = train.create_optimizer(train.create_model(key), FLAGS.learning_rate)
    tx = optax.adam(FLAGS.learning_rate)
    params = plain_jax_baseline.init_params(key)
    opt_state = tx.init(params)
    plain_step = plain_jax_baseline.make_train_step(tx)

    def flaxen_round():
        nonlocal optimizer
        for b in batches:
            optimizer, m = train.train_step(optimizer, {'image': b}, key)
        jax.block_until_ready(m['loss'])

    def plain_round():
        nonlocal params, opt_state
        for i, b in enumerate(batches):
            params, opt_state, loss = plain_step(params, opt_state, b, jax.random.fold_in(key, i))
        jax.block_until_ready(loss)

    times = {'flaxen': [], 'plain_jax_optax': []}
    for r in range(FLAGS.rounds + 1):  # round 0 compiles and warms up, not counted
        pair = [('flaxen', flaxen_round), ('plain_jax_optax', plain_round)]
        for name, fn in (pair if r % 2 else pair[::-1]):  # alternate which goes first
            start = time.perf_counter()
            fn()
            if r:
                times[name].append(1000 * (time.perf_counter() - start) / n)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({'ms_per_step_median': med, 'ratio': med['flaxen'] / med['plain_jax_optax'],
                      'ms_per_step_rounds': times, 'batch_size': bs}), flush=True)


if __name__ == '__main__':
    train.define_flags()  # --dataset, --data_dir, --batch_size, --learning_rate
    app.run(main)
