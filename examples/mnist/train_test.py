"""A few real training steps on small real data; checkpoint/resume; data parallel; one slow
epoch of the full Fashion-MNIST with an accuracy floor.

Tests of mechanics (resume, padding, devices) use a small synthetic set and say so in their
names; the tests that need real digits read ``$FLAXEN_DATA/mnist-t10k`` and are skipped with
the reason when it is absent.
"""

import gzip
import os
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from examples.mnist import extras, input_pipeline, train
from flaxen import metrics


def _split(images, labels, n_train, n_test):
    ds = {"image": (images.astype(np.float32) / 255.0)[..., None],
          "label": labels.astype(np.int32)}
    return ({k: v[:n_train] for k, v in ds.items()},
            {k: v[-n_test:] for k, v in ds.items()})


def synthetic_images(n, seed=0):
    """A learnable synthetic set: class k is a bright 7x7 square at one of ten positions,
    plus noise. uint8 images ``(n, 28, 28)`` and labels ``(n,)``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        r, c = divmod(int(k), 5)
        images[i, 3 + 12 * r:10 + 12 * r, 1 + 5 * c:8 + 5 * c] = 255
    return images, labels


def synthetic_datasets(n_train=512, n_test=256):
    return _split(*synthetic_images(n_train + n_test), n_train, n_test)


def real_datasets(n_train=512, n_test=256):
    """The real MNIST test digits split in two, or the test is skipped with the reason."""
    folder = Path(os.environ.get("FLAXEN_DATA", "")) / "mnist-t10k"
    if not os.environ.get("FLAXEN_DATA") or not folder.is_dir():
        pytest.skip("real MNIST digits not found: set FLAXEN_DATA to a folder holding "
                    "mnist-t10k/ (the MNIST test set IDX files)")
    images = input_pipeline.parse_idx(
        gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes()))
    labels = input_pipeline.parse_idx(
        gzip.decompress((folder / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    return _split(images, labels, n_train, n_test)


def write_synthetic_idx_dir(folder, n_train, n_test, seed=0):
    """The synthetic set as four IDX files (``--dataset=idx --data_dir=folder``)."""
    images, labels = synthetic_images(n_train + n_test, seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, sl in (("train", slice(0, n_train)), ("t10k", slice(n_train, None))):
        for kind, arr in (("images-idx3", images[sl]), ("labels-idx1", labels[sl])):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(
                int(d).to_bytes(4, "big") for d in arr.shape)
            (folder / f"{prefix}-{kind}-ubyte").write_bytes(header + arr.tobytes())
    return folder


def config(tmp_path, **kw):
    cfg = dict(learning_rate=0.1, momentum=0.9, batch_size=64, num_epochs=1, dataset="idx",
               data_dir=None, output_dir=str(tmp_path), resume=False, num_train_examples=0,
               num_devices=1, seed=0, progress=False)
    cfg.update(kw)
    return SimpleNamespace(**cfg)


def params_of(optimizer):
    return jax.device_get(optimizer.target.params)


def test_train_steps_reduce_loss_on_real_digits():
    train_ds, test_ds = real_datasets()
    model = train.create_model(jax.random.PRNGKey(0))
    assert set(model.params) == {"Conv_0", "Conv_1", "Dense_2", "Dense_3"}
    optimizer = train.create_optimizer(model, 0.1, 0.9)
    loss0, _ = train.eval_model(optimizer.target, test_ds)
    losses = []
    for i in range(8):
        batch = {k: v[i * 64:(i + 1) * 64] for k, v in train_ds.items()}
        optimizer, m = train.train_step(optimizer, batch)
        losses.append(float(m["loss"]))
    assert losses[0] <= 2.35  # about ln(10) at initialisation
    loss1, acc1 = train.eval_model(optimizer.target, test_ds)
    assert loss1 < loss0 - 0.3 and np.mean(losses[-2:]) < np.mean(losses[:2])
    assert acc1 > 0.4
    assert int(optimizer.state.step) == 8


def test_eval_model_matches_unpadded_reference_synthetic():
    _, test_ds = synthetic_datasets(n_test=300)  # not a multiple of any batch size used below
    model = train.create_model(jax.random.PRNGKey(1))
    loss, acc = train.eval_model(model, test_ds)
    logits = np.asarray(model(test_ds["image"]))
    ref_loss = -np.mean(logits[np.arange(300), test_ds["label"]])
    ref_acc = np.mean(logits.argmax(-1) == test_ds["label"])
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert acc == pytest.approx(ref_acc)


def test_resume_gives_the_same_result_synthetic(tmp_path):
    train_ds, test_ds = synthetic_datasets()
    straight = train.train(train_ds, test_ds, config(tmp_path / "a", num_epochs=2))
    train.train(train_ds, test_ds, config(tmp_path / "b", num_epochs=1))
    resumed = train.train(train_ds, test_ds, config(tmp_path / "b", num_epochs=2, resume=True))
    jax.tree.map(np.testing.assert_array_equal, params_of(straight), params_of(resumed))
    assert int(resumed.state.step) == 2 * (512 // 64)
    # Outputs: one checkpoint per epoch, one metrics row per epoch, TensorBoard, the plot.
    out = tmp_path / "b"
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint_1", "checkpoint_2"]
    rows = metrics.read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    a_rows = metrics.read_jsonl(tmp_path / "a" / "metrics.jsonl")
    assert rows[1]["test_accuracy"] == a_rows[1]["test_accuracy"]
    scalars = metrics.read_scalars(out / "tensorboard")
    assert [s for s, _ in scalars["test_loss"]] == [1, 2]
    assert scalars["test_loss"][1][1] == pytest.approx(rows[1]["test_loss"], rel=1e-6)
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Killed after logging epoch 2 but before saving it: the resumed run logs epoch 2 once.
    os.remove(out / "checkpoints" / "checkpoint_2")
    again = train.train(train_ds, test_ds, config(out, num_epochs=2, resume=True))
    jax.tree.map(np.testing.assert_array_equal, params_of(straight), params_of(again))
    assert [r["step"] for r in metrics.read_jsonl(out / "metrics.jsonl")] == [1, 2]
    assert [s for s, _ in metrics.read_scalars(out / "tensorboard")["test_loss"]] == [1, 2]
    # A fresh (non-resumed) run in the same folder starts over.
    train.train(train_ds, test_ds, config(out, num_epochs=1))
    assert [r["step"] for r in metrics.read_jsonl(out / "metrics.jsonl")] == [1]
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint_1"]


def test_data_parallel_matches_single_device_synthetic(tmp_path):
    assert jax.local_device_count() == 8  # the root conftest simulates 8 CPU devices
    train_ds, test_ds = synthetic_datasets(n_train=256, n_test=200)
    one = train.train(train_ds, test_ds, config(tmp_path / "1", num_devices=1))
    eight = train.train(train_ds, test_ds, config(tmp_path / "8", num_devices=0))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
                 params_of(one), params_of(eight))
    r1 = metrics.read_jsonl(tmp_path / "1" / "metrics.jsonl")[0]
    r8 = metrics.read_jsonl(tmp_path / "8" / "metrics.jsonl")[0]
    assert r8["test_accuracy"] == pytest.approx(r1["test_accuracy"], abs=0.01)
    with pytest.raises(extras.UsageError, match="divisible by the number of devices"):
        train.train(train_ds, test_ds, config(tmp_path / "x", batch_size=60, num_devices=8))


FASHION = Path(input_pipeline.FASHION_MNIST_SYSTEM_DIR)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_one_epoch_full_fashion_mnist_reaches_accuracy_floor(tmp_path):
    """The real example, default flags, one epoch on all 60,000 Fashion-MNIST images."""
    train_ds, test_ds, _ = input_pipeline.get_datasets("fashion_mnist", str(FASHION))
    train.train(train_ds, test_ds, config(tmp_path, batch_size=128, dataset="fashion_mnist"))
    row = metrics.read_jsonl(tmp_path / "metrics.jsonl")[0]
    # A working CNN reaches about 0.87 after one epoch; chance is 0.10.
    assert row["test_accuracy"] >= 0.83, row


def test_plain_jax_baseline_is_the_same_model():
    """The comparison in README.md is fair: same function of the same parameters."""
    from examples.mnist import plain_jax_baseline as baseline

    model = train.create_model(jax.random.PRNGKey(3))
    p = model.params
    mapped = {new: {"w": p[old]["kernel"], "b": p[old]["bias"]} for new, old in (
        ("conv1", "Conv_0"), ("conv2", "Conv_1"), ("dense1", "Dense_2"), ("dense2", "Dense_3"))}
    ref = baseline.init_params(jax.random.PRNGKey(3))
    jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), mapped, ref)
    _, test_ds = synthetic_datasets(n_test=16)
    np.testing.assert_allclose(np.asarray(jax.jit(baseline.forward)(mapped, test_ds["image"])),
                               np.asarray(model(test_ds["image"])), rtol=1e-5, atol=1e-5)


def _offline_mnist(monkeypatch, tmp_path):
    """MNIST cannot be downloaded, and no Fashion-MNIST is where the example looks."""
    import dataclasses

    offline = dataclasses.replace(input_pipeline.MNIST,
                                  mirrors=((tmp_path / "nowhere").as_uri() + "/",))
    monkeypatch.setattr(input_pipeline, "MNIST", offline)
    monkeypatch.setitem(input_pipeline.DATASETS, "mnist", offline)
    monkeypatch.setattr(input_pipeline, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("FLAXEN_DATA", str(tmp_path / "data"))


def test_no_data_at_all_says_how_to_get_it_in_one_line(monkeypatch, tmp_path):
    _offline_mnist(monkeypatch, tmp_path)
    with pytest.raises(input_pipeline.DataError) as e:
        input_pipeline.load("mnist", allow_fallback=True, cache_dir=str(tmp_path / "cache"))
    msg = str(e.value)
    assert "\n" not in msg
    assert "`apt-get install dataset-fashion-mnist`" in msg and "--data_dir" in msg
    assert str(tmp_path / "data" / "fashion-mnist") in msg


@pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_falls_back_to_fashion_mnist_in_flaxen_data_and_says_why(monkeypatch, tmp_path):
    _offline_mnist(monkeypatch, tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "fashion-mnist").symlink_to(FASHION)
    loaded = input_pipeline.load("mnist", allow_fallback=True, cache_dir=str(tmp_path / "c"),
                                 num_train_examples=10)
    assert loaded.name == "fashion_mnist" and loaded.folder == tmp_path / "data" / "fashion-mnist"
    assert "could not be downloaded" in loaded.note and str(loaded.folder) in loaded.note
    cfg = config(tmp_path / "out")
    lines = extras.summary_lines(loaded, cfg, 1.5)
    assert lines[0].startswith("Dataset: fashion_mnist from ") and "why not MNIST" in lines[1]


@pytest.mark.slow
def test_user_errors_are_one_line_and_exit_2(tmp_path):
    """The real program: bad flags give one `Error:` line, exit status 2, no traceback."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]),
               JAX_PLATFORMS="cpu")
    for flags, expected in ((["--batch_size=0"], "Error: --batch_size=0"),
                            (["--num_processes=2"], "Error: --num_processes given without")):
        p = subprocess.run([sys.executable, "examples/mnist/train.py", *flags,
                            f"--output_dir={tmp_path}"], capture_output=True, text=True,
                           env=env, cwd=Path(__file__).resolve().parents[2], timeout=300)
        assert p.returncode == 2, p.stderr[-2000:]
        assert "Traceback" not in p.stderr and p.stderr.strip().splitlines()[-1].startswith(
            expected), p.stderr[-2000:]
        assert sum(line.startswith("Error:") for line in p.stderr.splitlines()) == 1
