"""The MNIST example on two processes (loopback, 2 simulated CPU devices each, gloo).

Synthetic data (``--dataset=idx`` files written here): these tests check the mechanics of a
multi-process run, not accuracy. The reference is this test process training the same
global batches on 4 of its simulated devices.

Tolerance: the 2-process run reduces the gradients over 4 devices of two processes (gloo),
the reference over 4 devices of one process (XLA's in-process all-reduce); the summation
order can differ, so results may differ in the last bits, and the differences grow through
training: 16 momentum steps stay within rtol 1e-5 / atol 1e-6 (measured: max 1.3e-7), 64
steps within rtol 1e-4 / atol 2e-5 (measured: max 3.7e-6).
"""

import os
import signal
import time

import jax
import numpy as np
import pytest

from examples.mnist import input_pipeline, train
from examples.mnist.train_test import config, write_synthetic_idx_dir
from flaxen import metrics
from flaxen.training import checkpoints
from tests import multiprocess_util as mp

pytestmark = pytest.mark.slow  # each launch starts two Python processes that import JAX

TRAIN = "examples/mnist/train.py"
TOL = dict(rtol=1e-5, atol=1e-6)  # 16 steps
TOL_64 = dict(rtol=1e-4, atol=2e-5)  # 64 steps


def _flags(data_dir, out, num_epochs, *extra):
    return [TRAIN, "--dataset=idx", f"--data_dir={data_dir}", f"--output_dir={out}",
            "--batch_size=32", f"--num_epochs={num_epochs}", "--noprogress", *extra]


def _reference(data_dir, out, num_epochs):
    train_ds, test_ds, _ = input_pipeline.get_datasets("idx", str(data_dir))
    opt = train.train(train_ds, test_ds, config(out, dataset="idx", batch_size=32,
                                                num_epochs=num_epochs, num_devices=4))
    return jax.device_get(opt.unreplicate().target.params)


def _saved_params(out, step):
    opt = train.create_optimizer(train.create_model(jax.random.PRNGKey(0)), 0.1, 0.9)
    restored = checkpoints.restore_checkpoint(out / "checkpoints", opt, step=step)
    return jax.device_get(restored.target.params)


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_two_processes_train_like_one_process_with_four_devices(tmp_path):
    data = write_synthetic_idx_dir(tmp_path / "data", n_train=256, n_test=100)
    out = tmp_path / "run"
    t0 = time.monotonic()
    results = mp.run(_flags(data, out, 2), 2, 2, tmp_path / "logs", timeout=400)
    print(f"2-process MNIST run: {time.monotonic() - t0:.1f} s")
    mp.check_all_ok(results)
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint_1", "checkpoint_2"]
    # Only process 0 wrote: one metrics row per epoch, one event file, one plot, a summary.
    assert [r["step"] for r in metrics.read_jsonl(out / "metrics.jsonl")] == [1, 2]
    assert len(os.listdir(out / "tensorboard")) == 1
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "Final test accuracy" in results[0].output
    assert "Final test accuracy" not in results[1].output
    assert "train epoch" not in results[1].output  # process 1 logs warnings and errors only

    want = _reference(data, tmp_path / "ref", 2)
    got = _saved_params(out, 2)
    print(f"max |2-process - 1-process| parameter difference: {_max_diff(got, want):.3g}")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), got, want)
    # Evaluation counted every test example once: the same accuracy as the reference.
    ref_rows = metrics.read_jsonl(tmp_path / "ref" / "metrics.jsonl")
    rows = metrics.read_jsonl(out / "metrics.jsonl")
    assert rows[-1]["test_accuracy"] == pytest.approx(ref_rows[-1]["test_accuracy"], abs=1e-6)


def test_killed_process_stops_the_other_and_resume_on_two_then_one(tmp_path):
    data = write_synthetic_idx_dir(tmp_path / "data", n_train=512, n_test=100)
    out = tmp_path / "run"
    heartbeat = 10
    procs = mp.start(_flags(data, out, 20), 2, 2, tmp_path / "logs",
                     FLAXEN_HEARTBEAT_TIMEOUT_S=str(heartbeat))
    first = out / "checkpoints" / "checkpoint_1"
    deadline = time.monotonic() + 300
    while not first.exists() and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.2)
    assert first.exists(), (tmp_path / "logs" / "process_0.log").read_text()[-3000:]
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    results = mp.wait(procs, tmp_path / "logs", timeout=heartbeat + 60)
    took = time.monotonic() - killed
    print(f"surviving process exited {results[0].returncode} after {took:.1f} s")
    assert results[0].returncode not in (0, None) and results[0].returncode != -9, \
        results[0].output[-3000:]
    assert "another task died" in results[0].output or "unhealthy" in results[0].output
    assert took < heartbeat + 30  # the documented bound: heartbeat timeout + polling slack

    # Resume on two processes (to epoch 2), on one (epoch 3, in this process, 4 devices),
    # and on two again (epoch 4): the same parameters as one uninterrupted run.
    mp.check_all_ok(mp.run(_flags(data, out, 2, "--resume"), 2, 2, tmp_path / "logs2"))
    train_ds, test_ds, _ = input_pipeline.get_datasets("idx", str(data))
    train.train(train_ds, test_ds, config(out, dataset="idx", batch_size=32, num_epochs=3,
                                          num_devices=4, resume=True))
    mp.check_all_ok(mp.run(_flags(data, out, 4, "--resume"), 2, 2, tmp_path / "logs3"))
    assert [r["step"] for r in metrics.read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]
    want = _reference(data, tmp_path / "ref", 4)
    got = _saved_params(out, 4)
    print(f"after kill and resumes: max parameter difference {_max_diff(got, want):.3g}")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL_64), got, want)
