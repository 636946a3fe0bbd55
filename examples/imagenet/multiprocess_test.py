"""The ImageNet example on two processes (loopback, 2 simulated CPU devices each, gloo).

A synthetic image folder (written here) and a tiny ResNet-18 (4 filters, 16x16 pixels): this
checks the mechanics of a multi-process run, not accuracy. The reference is this test
process on 4 of its simulated devices, on the same global batches. Gradients and BatchNorm
statistics are reduced in a different order (gloo across processes vs XLA in one process),
so the parameters agree to rounding, not bit for bit: measured max difference 8.2e-5 over
parameters and BatchNorm statistics after 8 steps at learning rate 0.4, within rtol 1e-4,
atol 1e-5.
"""

import os
import time

import jax
import numpy as np
import pytest

from examples.imagenet import input_pipeline, train
from flaxen import metrics
from flaxen.training import checkpoints
from tests import multiprocess_util as mp

pytestmark = pytest.mark.slow  # starts two Python processes that import JAX

TRAIN = "examples/imagenet/train.py"
TOL = dict(rtol=1e-4, atol=1e-5)  # 8 SGD steps with BatchNorm


def test_two_processes_train_like_one_process_with_four_devices_synthetic(tmp_path):
    data = str(tmp_path / "images")
    input_pipeline.write_synthetic_image_folder(data, num_classes=4, per_class=8,
                                                size=(24, 20))
    out = tmp_path / "run"
    argv = [TRAIN, f"--data_dir={data}", f"--output_dir={out}", "--model=resnet18",
            "--num_filters=4", "--image_size=16", "--batch_size=8", "--eval_batch_size=8",
            "--learning_rate=0.4", "--warmup_epochs=0.5", "--num_epochs=2",
            "--log_every_steps=1", "--rng_impl=rbg", "--num_workers=2", "--noprogress"]
    t0 = time.monotonic()
    results = mp.run(argv, 2, 2, tmp_path / "logs", timeout=400)
    print(f"2-process ImageNet run: {time.monotonic() - t0:.1f} s")
    mp.check_all_ok(results)
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint_1", "checkpoint_2"]
    rows = metrics.read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows if "epoch" in r] == [1, 2]
    assert len([r for r in rows if "epoch" not in r]) == 8  # 4 steps per epoch, each once
    assert len(os.listdir(out / "tensorboard")) == 1
    assert (out / "curves.png").exists() and (out / "config.json").exists()
    assert "final: eval_top1" in results[0].output
    assert "final:" not in results[1].output

    config = train.Config(
        data_dir=data, model="resnet18", num_filters=4, image_size=16, batch_size=8,
        eval_batch_size=8, learning_rate=0.4, warmup_epochs=0.5, num_epochs=2,
        log_every_steps=1, rng_impl="rbg", num_workers=2, progress=False, plot=False,
        num_devices=4)
    ref = train.train_and_evaluate(config, str(tmp_path / "ref"))
    template = {"optimizer": ref["optimizer"], "batch_stats": ref["batch_stats"],
                "epoch": np.int32(0)}
    got = checkpoints.restore_checkpoint(out / "checkpoints", template)
    assert int(got["epoch"]) == 2
    want = {"params": ref["optimizer"].target.params, "stats": ref["batch_stats"]}
    got = {"params": got["optimizer"].target.params, "stats": got["batch_stats"]}
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    print(f"max |2-process - 1-process| ResNet parameter/statistics difference: {diff:.3g}")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), jax.device_get(got),
                 jax.device_get(want))
    # Evaluation counted every image once: the same accuracy as the reference.
    assert rows[-1]["eval_top1"] == pytest.approx(ref["history"][-1]["eval_top1"], abs=1e-6)
