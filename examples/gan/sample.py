"""Samples from a trained GAN and scores its checkpoints.

    python examples/gan/sample.py --output_dir=/tmp/flaxen_gan              # every checkpoint
    python examples/gan/sample.py --output_dir=/tmp/flaxen_gan --checkpoint_step=5

For each checkpoint of a train.py run in --output_dir (the configuration comes from its
config.json): a 10 x 10 grid of samples from the fixed noise of train.py (column k drawn
for class k when the run was conditional)
(``samples/checkpoint_N.png``), and, with --classifier_dir, the Frechet distance and the
inception score of --num_eval_samples images, printed and appended to ``scores.jsonl``.
Useful when training ran without a classifier, or to score again with another one.
"""

from __future__ import annotations

import glob
import json
import os
import re

import jax
from absl import app, flags

from flaxen import metrics
from flaxen.training import checkpoints

try:
    from examples.gan import plots, runs, train
except ImportError:
    import plots
    import runs
    import train

FLAGS = flags.FLAGS  # --output_dir, --classifier_dir, --num_eval_samples: see train.py
flags.DEFINE_integer('checkpoint_step', 0, 'The epoch of the checkpoint to use (0: every one).')


def load(output_dir: str, step: int) -> tuple:
    """``(generator, generator_state, seed)`` of the checkpoint ``step`` of a train.py run:
    the moving average of the generator (what train.py samples and scores)."""
    path = os.path.join(output_dir, 'config.json')
    if not os.path.exists(path):
        raise runs.UsageError(f'{path} is missing: --output_dir is not a train.py run.')
    with open(path, encoding='utf-8') as f:
        cfg = json.load(f)
    generator, g_state, discriminator = train.create_models(
        jax.random.PRNGKey(0), cfg['g_features'], cfg['d_features'],
        cfg.get('conditional', False))  # runs from before the flag were unconditional
    g_opt, d_opt = train.create_optimizers(generator, discriminator, cfg['learning_rate'],
                                           cfg['beta1'])
    ema = {'generator': generator, 'generator_state': g_state}
    state = checkpoints.restore_checkpoint(
        os.path.join(output_dir, 'checkpoints'),
        {'generator': g_opt, 'discriminator': d_opt, 'generator_state': g_state,
         'generator_ema': ema}, step=step)
    ema = state['generator_ema']
    return ema['generator'], ema['generator_state'], cfg['seed']


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    out = FLAGS.output_dir
    try:
        steps = sorted(int(re.sub(r'.*_', '', p))
                       for p in glob.glob(os.path.join(out, 'checkpoints', 'checkpoint_*')))
        if FLAGS.checkpoint_step:
            steps = [s for s in steps if s == FLAGS.checkpoint_step]
        if not steps:
            which = f' {FLAGS.checkpoint_step}' if FLAGS.checkpoint_step else ''
            raise runs.UsageError(f'No checkpoint{which} in {out}/checkpoints.')
        classifier = runs.load_classifier(FLAGS.classifier_dir)
        reference = None
        if classifier is not None:
            with open(os.path.join(out, 'config.json'), encoding='utf-8') as f:
                dataset = json.load(f)['dataset']
            _, test_ds = train.input_pipeline.get_datasets(dataset, FLAGS.data_dir)
            reference = runs.dataset_sums(classifier, test_ds['image'], None)
    except (train.input_pipeline.DataError, runs.UsageError) as e:
        runs.exit_with_error(e)
    with metrics.JsonlWriter(os.path.join(out, 'scores.jsonl')) as log:
        for step in steps:
            generator, g_state, seed = load(out, step)
            noise = train.eval_noise(seed, max(FLAGS.num_eval_samples, train.GRID))
            grid = plots.grid(jax.device_get(train.generate(
                generator, g_state, noise[:train.GRID], train.eval_labels(train.GRID))),
                columns=10)
            plots.save_png(grid, os.path.join(out, 'samples', f'checkpoint_{step}.png'), scale=3)
            row = {}
            if classifier is not None:
                row['fid'], row['inception_score'] = train.score(
                    generator, g_state, classifier, reference,
                    noise[:FLAGS.num_eval_samples], None)
                log.write(step, row)
            print(json.dumps({'checkpoint': step, **row}), flush=True)


if __name__ == '__main__':
    train.define_flags()  # --output_dir, --classifier_dir, --data_dir, ...
    app.run(main)
