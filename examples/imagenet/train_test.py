"""End-to-end tests of train.py on a generated folder of JPEGs (ResNet-18 at 16x16 pixels).

One run of two epochs on all 8 simulated devices is shared by the tests; the compiled
steps are cached in train.py, so the resumed run does not compile again.
"""

import dataclasses
import os
import shutil

import jax
import numpy as np
import pytest

from examples.imagenet import input_pipeline, train
from flaxen import metrics
from flaxen.optim import schedules

CONFIG = train.Config(
    model="resnet18", num_filters=4, image_size=16, batch_size=8, eval_batch_size=8,
    learning_rate=0.4, warmup_epochs=0.5, num_epochs=2, log_every_steps=1, rng_impl="rbg",
    num_workers=2, progress=False, plot=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("images"))
    input_pipeline.write_synthetic_image_folder(root, num_classes=4, per_class=8,
                                                size=(24, 20))
    with open(os.path.join(root, "train", "c002", "zz_broken.JPEG"), "wb") as f:
        f.write(b"\xff\xd8 this is not really a JPEG")
    return root


@pytest.fixture(scope="module")
def run8(data_dir, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("run8"))
    config = dataclasses.replace(CONFIG, data_dir=data_dir)
    return config, model_dir, train.train_and_evaluate(config, model_dir)


def _params(result):
    return jax.device_get(result["optimizer"].target.params)


def _assert_trees_close(a, b, **tol):
    ja, jb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(ja) == len(jb) and jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(ja, jb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def test_trains_and_writes_outputs(run8):
    config, model_dir, result = run8
    assert len(jax.devices()) == 8
    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    # The unreadable JPEG is skipped and counted, not fatal.
    assert result["skipped"] >= 1
    rows = metrics.read_jsonl(os.path.join(model_dir, "metrics.jsonl"))
    losses = [r["train_loss"] for r in rows if "train_loss" in r and "epoch" not in r]
    assert len(losses) == 8  # 4 steps per epoch, logged each step
    assert np.mean(losses[-2:]) < losses[0]
    assert 0.0 <= history[-1]["eval_top1"] <= history[-1]["eval_top5"] <= 1.0
    scalars = metrics.read_scalars(os.path.join(model_dir, "tensorboard"))
    assert "epoch/eval_top1" in scalars and "train/loss" in scalars
    assert os.path.getsize(os.path.join(model_dir, "curves.png")) > 1000
    assert sorted(os.listdir(os.path.join(model_dir, "checkpoints"))) == [
        "checkpoint_1", "checkpoint_2"]


def test_resume_matches_uninterrupted_run(run8, tmp_path):
    config, model_dir, result = run8
    # Pretend the run stopped after epoch 1: keep only its checkpoint, then resume.
    os.makedirs(tmp_path / "checkpoints")
    shutil.copy(os.path.join(model_dir, "checkpoints", "checkpoint_1"),
                tmp_path / "checkpoints" / "checkpoint_1")
    resumed = train.train_and_evaluate(dataclasses.replace(config, resume=True), str(tmp_path))
    assert [h["epoch"] for h in resumed["history"]] == [2]
    _assert_trees_close(_params(resumed), _params(result), rtol=1e-6, atol=1e-6)
    _assert_trees_close(jax.device_get(resumed["batch_stats"]),
                        jax.device_get(result["batch_stats"]), rtol=1e-6, atol=1e-6)
    assert resumed["history"][0]["eval_top1"] == pytest.approx(result["history"][1]["eval_top1"])


def test_one_device_matches_eight(run8, tmp_path):
    config, _, result8 = run8
    result1 = train.train_and_evaluate(dataclasses.replace(config, num_devices=1),
                                       str(tmp_path))
    _assert_trees_close(_params(result1), _params(result8), rtol=2e-3, atol=2e-4)
    _assert_trees_close(jax.device_get(result1["batch_stats"]),
                        jax.device_get(result8["batch_stats"]), rtol=2e-3, atol=2e-4)
    for h1, h8 in zip(result1["history"], result8["history"]):
        assert h1["train_loss"] == pytest.approx(h8["train_loss"], rel=1e-3)


def test_bad_input_errors(tmp_path):
    with pytest.raises(input_pipeline.DatasetError, match="does not exist"):
        train.train_and_evaluate(dataclasses.replace(CONFIG, data_dir=str(tmp_path / "no")),
                                 str(tmp_path / "out"))
    with pytest.raises(input_pipeline.DatasetError, match="--data_dir is required"):
        train.train_and_evaluate(CONFIG, str(tmp_path / "out"))
    with pytest.raises(input_pipeline.DatasetError, match="multiples of the 8 devices"):
        train.train_and_evaluate(dataclasses.replace(CONFIG, batch_size=12),
                                 str(tmp_path / "out"))


def test_cross_entropy_and_topk_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 7)).astype(np.float32)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labels = rng.integers(0, 7, size=6).astype(np.int32)
    for ls in (0.0, 0.1):
        targets = np.full((6, 7), ls / 7, np.float32)
        targets[np.arange(6), labels] += 1 - ls
        want = -(targets * log_probs).sum(-1)
        got = train.cross_entropy(log_probs, labels, 7, ls)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    rank = (logits > logits[np.arange(6), labels][:, None]).sum(-1)  # 0 = best
    for k in (1, 5):
        np.testing.assert_array_equal(train.topk_correct(log_probs, labels, k), rank < k)
    # Fewer classes than k: everything is in the top k.
    np.testing.assert_array_equal(train.topk_correct(log_probs[:, :3], labels % 3, 5), 1.0)


def test_learning_rate_schedule_matches_formula():
    config = dataclasses.replace(CONFIG, learning_rate=0.1, batch_size=512, warmup_epochs=5)
    peak, warmup, decay = train.lr_schedule_args(config, steps_per_epoch=10, total_steps=900)
    assert (peak, warmup, decay) == (0.2, 50, 900)
    lr = schedules.warmup_cosine(peak, warmup, decay)
    for step in (0, 25, 50, 300, 899):
        want = (peak * step / warmup if step < warmup else
                peak * 0.5 * (1 + np.cos(np.pi * (step - warmup) / (decay - warmup))))
        assert float(lr(step)) == pytest.approx(want, rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_half_precision_and_label_smoothing_train(data_dir, tmp_path):
    config = dataclasses.replace(CONFIG, data_dir=data_dir, half_precision=True,
                                 label_smoothing=0.1, num_epochs=1, plot=False)
    result = train.train_and_evaluate(config, str(tmp_path))
    params = jax.tree.leaves(result["optimizer"].target.params)
    assert {p.dtype for p in params} == {np.dtype(np.float32)}
    assert np.isfinite(result["history"][0]["train_loss"])
