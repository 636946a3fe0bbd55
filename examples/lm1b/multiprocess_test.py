"""The LM example on two processes (loopback, 2 simulated CPU devices each, gloo).

Synthetic text (random words, written here): this checks the mechanics of a multi-process
run, not what the model learns. The reference is one plain process with 4 simulated devices
on the same global batches; they reduce gradients in different orders (gloo across
processes vs XLA within one), so the parameters agree to rounding, not bit for bit.

Tolerance: rtol 1e-5, atol 1e-6 for every parameter but the attention key biases, whose
gradient is zero in exact arithmetic (softmax ignores a constant added to every score of a
query): they receive only rounding noise, which Adam divides by its own tiny second moment,
so they stay near 0 (about 2e-5) but differ between the runs by up to about 4e-5; atol 1e-4
for those. Measured: key bias 3.8e-5, every other parameter at most 1.2e-7.
"""

import os
import time

import jax
import numpy as np
import pytest

from examples.lm1b import generate
from flaxen import metrics
from tests import multiprocess_util as mp

pytestmark = pytest.mark.slow  # starts three Python processes that import JAX

TRAIN = "examples/lm1b/train.py"
TOL = dict(rtol=1e-5, atol=1e-6)  # 12 AdamW steps; see above
TOL_KEY_BIAS = dict(rtol=0, atol=1e-4)


def synthetic_text(path, words=4000, seed=0):
    rng = np.random.default_rng(seed)
    vocab = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away"]
    lines = [" ".join(rng.choice(vocab, 8)) + "." for _ in range(words // 8)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _flags(text, out):
    return [TRAIN, f"--text_file={text}", f"--output_dir={out}", "--emb_dim=32",
            "--num_heads=2", "--num_layers=2", "--context=16", "--batch_size=8",
            "--num_steps=12", "--learning_rate=1e-2", "--warmup_steps=2",
            "--eval_every=6", "--eval_batch_size=16", "--eval_batches=4", "--log_every=3",
            "--checkpoint_every=6", "--sample_length=8", "--noprogress"]


def test_two_processes_train_like_one_process_with_four_devices_synthetic(tmp_path):
    text = synthetic_text(tmp_path / "text.txt")
    out = tmp_path / "run"
    t0 = time.monotonic()
    results = mp.run(_flags(text, out), 2, 2, tmp_path / "logs", timeout=400)
    print(f"2-process LM run: {time.monotonic() - t0:.1f} s")
    mp.check_all_ok(results)
    ref = mp.run_single(_flags(text, tmp_path / "ref"), 4, tmp_path / "logs")
    mp.check_all_ok([ref])

    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint_12", "checkpoint_6"]
    # Only process 0 wrote: each step logged once, one event file, one plot and sample.
    rows = metrics.read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "train_loss" in r] == [3, 6, 9, 12]
    assert [r["step"] for r in rows if "eval_loss" in r] == [6, 12]
    assert len([n for n in os.listdir(out) if n.startswith("events.out")]) == 1
    assert (out / "curves.png").exists() and (out / "sample.txt").exists()
    assert '"final_step": 12' in results[0].output
    assert '"final_step"' not in results[1].output
    # The same held-out loss: every held-out window counted once.
    ref_rows = metrics.read_jsonl(tmp_path / "ref" / "metrics.jsonl")
    # (The loop writes each row one call later, so the last row may be another kind.)
    assert [r for r in rows if "eval_loss" in r][-1]["eval_loss"] == pytest.approx(
        [r for r in ref_rows if "eval_loss" in r][-1]["eval_loss"], rel=1e-4)

    got = generate.load_run(str(out))[2]
    want = generate.load_run(str(tmp_path / "ref"))[2]
    for path, a in jax.tree_util.tree_flatten_with_path(got)[0]:
        b = want
        for key in path:
            b = b[key.key]
        diff = float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        name = jax.tree_util.keystr(path)
        print(f"{name}: max |2-process - 1-process| {diff:.3g} "
              f"(largest value {float(np.max(np.abs(b))):.3g})")
        tol = TOL_KEY_BIAS if "['key']['bias']" in name else TOL
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), err_msg=name, **tol)
