"""A few real training steps on canvases of real images; metrics against NumPy; resume;
data parallel; the baseline is the same model; clean errors."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from examples.segmentation import input_pipeline, train
from flaxen import metrics

HERE = Path(__file__).resolve().parent


def source_folder():
    """A folder with real 28x28 test images: MNIST digits under $FLAXEN_DATA, or the apt
    Fashion-MNIST."""
    root = os.environ.get("FLAXEN_DATA")
    candidates = [Path(root, "mnist-t10k")] if root else []
    candidates.append(Path(input_pipeline.SYSTEM_FASHION_MNIST))
    for folder in candidates:
        if (folder / "t10k-images-idx3-ubyte.gz").is_file():
            return folder
    pytest.skip("no real images: set FLAXEN_DATA (mnist-t10k/) or apt-get install "
                "dataset-fashion-mnist")


def data_folder(tmp_path: Path) -> Path:
    """``tmp_path/data`` with the four IDX files, the test images standing in for the
    training images too (links to ``source_folder()``)."""
    folder = source_folder()
    data = tmp_path / "data"
    data.mkdir()
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (data / (stem + ".gz")).symlink_to(folder / (stem + ".gz"))
        (data / (stem.replace("t10k", "train") + ".gz")).symlink_to(folder / (stem + ".gz"))
    return data


def small_datasets(n_train=64, n_test=30):
    """Canvases of real test images: the first 5,000 for training canvases, the rest for test."""
    folder = source_folder()
    images, _ = input_pipeline.read_idx(folder / "t10k-images-idx3-ubyte.gz")
    labels, _ = input_pipeline.read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    train_ds = input_pipeline.make_canvases(images[:5000], labels[:5000], n_train, [0, 0])
    test_ds = input_pipeline.make_canvases(images[5000:], labels[5000:], n_test, [0, 1])
    return train_ds, test_ds


def config(tmp_path, **kw):
    cfg = dict(learning_rate=3e-3, warmup_epochs=0.0, batch_size=16, num_epochs=1,
               dataset="fashion_mnist", data_dir=None, cache_dir=None, num_train_canvases=64,
               num_test_canvases=30,
               data_seed=0, output_dir=str(tmp_path), resume=False, num_devices=1, seed=0,
               progress=False)
    cfg.update(kw)
    return SimpleNamespace(**cfg)


def params_of(optimizer):
    return jax.device_get(optimizer.target.params)


def test_train_steps_reduce_loss():
    train_ds, _ = small_datasets()
    model = train.create_model(jax.random.PRNGKey(0))
    assert set(model.params) == {"stem", "down_0", "down_1", "bottom", "context",
                                 "upsample_1", "upsample_0", "up_1", "up_0", "head", "logits"}
    assert set(model.params["stem"]) == {"Conv_0", "Conv_1", "GroupNorm_2"}
    optimizer = train.create_optimizer(model, 3e-3)
    learning_rate_fn = train.create_learning_rate_fn(3e-3, 100, 1)
    batch = {k: v[:16] for k, v in train_ds.items()}
    losses = []
    for _ in range(8):  # the same batch: the loss must fall
        optimizer, m = train.train_step(optimizer, batch, learning_rate_fn)
        losses.append(float(m["loss"]))
    assert float(m["learning_rate"]) == pytest.approx(3e-3 * (0.5 + 0.5 * np.cos(np.pi * 7 / 100)))
    assert losses[-1] < 0.8 * losses[0], losses
    assert int(optimizer.state.step) == 8


def test_learning_rate_warms_up_then_decays_along_a_half_cosine():
    fn = train.create_learning_rate_fn(4e-3, 50, 4, 0.8)  # 200 steps, 40 of warm-up
    for step in (0, 10, 40, 41, 120, 199, 200):
        want = (4e-3 * step / 40 if step < 40
                else 4e-3 * 0.5 * (1 + np.cos(np.pi * (step - 40) / 160)))
        assert float(fn(step)) == pytest.approx(want, rel=1e-5, abs=1e-9), step
    with pytest.raises(train.ConfigError, match=r"--warmup_epochs=4: expected a number of "
                       r"epochs in \[0, 4\)"):
        train.create_learning_rate_fn(4e-3, 50, 4, 4)


def test_eval_model_matches_numpy_reference():
    _, test_ds = small_datasets(n_test=30)  # 30: not a multiple of the 8 devices below
    model = train.create_model(jax.random.PRNGKey(1))
    got = train.eval_model(model, test_ds)
    logits = np.asarray(model((test_ds["image"].astype(np.float32) / 255)[..., None]), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    y = test_ds["label"].astype(np.int64)
    ref_loss = -np.mean(np.take_along_axis(log_probs, y[..., None], -1))
    pred = logits.argmax(-1)
    ref_iou = np.array([np.sum((y == k) & (pred == k)) / np.sum((y == k) | (pred == k))
                        if np.any((y == k) | (pred == k)) else np.nan for k in range(11)])
    np.testing.assert_allclose(got["loss"], ref_loss, rtol=1e-5)
    # An untrained model has near-tied logits, so a few of the 122,880 pixels can take the
    # other class when the batch is computed in another shape (seen in CI: 2 classes moved by
    # 3e-6). 1e-4 allows a handful of such flips; a wrong class, count or denominator moves
    # these numbers by far more.
    flips = 1e-4
    assert got["pixel_accuracy"] == pytest.approx(np.mean(pred == y), abs=flips)
    np.testing.assert_allclose(got["iou"], ref_iou, rtol=0, atol=flips)
    assert got["mean_iou"] == pytest.approx(np.nanmean(ref_iou), abs=flips)
    # The same sums over 8 devices, with padding rows.
    mesh = train.make_mesh(0)
    sharded = train.eval_model(model, test_ds, mesh)
    np.testing.assert_allclose(sharded["iou"], got["iou"], rtol=0, atol=flips)
    assert sharded["loss"] == pytest.approx(got["loss"], rel=1e-5)


def test_resume_gives_the_same_result(tmp_path, monkeypatch):
    train_ds, test_ds = small_datasets()
    straight = train.train(train_ds, test_ds, config(tmp_path / "a", num_epochs=2))
    # The same run, interrupted (Ctrl-C) at the start of epoch 2, then resumed.
    real_train_epoch = train.train_epoch

    def interrupted(optimizer, train_ds, batch_size, epoch, *args, **kwargs):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_train_epoch(optimizer, train_ds, batch_size, epoch, *args, **kwargs)

    monkeypatch.setattr(train, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.train(train_ds, test_ds, config(tmp_path / "b", num_epochs=2))
    monkeypatch.undo()
    resumed = train.train(train_ds, test_ds, config(tmp_path / "b", num_epochs=2, resume=True))
    jax.tree.map(np.testing.assert_array_equal, params_of(straight), params_of(resumed))
    assert int(resumed.state.step) == 2 * 64 // 16
    out = tmp_path / "b"
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint_1", "checkpoint_2"]
    rows = [r for r in metrics.read_jsonl(out / "metrics.jsonl") if "epoch" in r]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 4), (2, 8)]
    a_rows = [r for r in metrics.read_jsonl(tmp_path / "a" / "metrics.jsonl") if "epoch" in r]
    assert rows[1]["test_mean_iou"] == a_rows[1]["test_mean_iou"]
    assert len(rows[1]["test_iou"]) == 11
    scalars = metrics.read_scalars(out / "tensorboard")
    assert [s for s, _ in scalars["test_mean_iou"]] == [4, 8]
    for name in ("learning_curves.png", "predictions.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A changed configuration is refused; a fresh (non-resumed) run starts over.
    with pytest.raises(train.ConfigError, match="--learning_rate=0.01"):
        train.train(train_ds, test_ds, config(out, num_epochs=3, resume=True, learning_rate=0.01))
    train.train(train_ds, test_ds, config(out, num_epochs=1))
    assert [r["epoch"] for r in metrics.read_jsonl(out / "metrics.jsonl") if "epoch" in r] == [1]
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint_1"]


def test_data_parallel_matches_single_device(tmp_path):
    assert jax.local_device_count() == 8  # the root conftest simulates 8 CPU devices
    train_ds, test_ds = small_datasets(n_train=32, n_test=16)
    one = train.train(train_ds, test_ds, config(tmp_path / "1", num_devices=1))
    eight = train.train(train_ds, test_ds, config(tmp_path / "8", num_devices=0))
    # Sums over 8 devices round differently from sums over one. Adam divides each gradient by
    # its own running scale, so a weight whose gradient is near zero can move by up to a few
    # learning rates differently: a loose bound for single elements, a tight one on average.
    one, eight = params_of(one), params_of(eight.unreplicate())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-4), one, eight)
    mean_diffs = jax.tree.leaves(jax.tree.map(
        lambda a, b: float(np.mean(np.abs(np.asarray(a) - np.asarray(b)))), one, eight))
    assert max(mean_diffs) < 1e-5, mean_diffs
    with pytest.raises(train.ConfigError, match="divisible by the number of devices"):
        train.train(train_ds, test_ds, config(tmp_path / "x", batch_size=12, num_devices=8))


def test_plain_jax_baseline_is_the_same_model():
    """The comparison in README.md is fair: the same function of the same parameters."""
    from examples.segmentation import plain_jax_baseline as baseline

    model = train.create_model(jax.random.PRNGKey(3))
    mapped = baseline.from_flaxen(model.params)
    ref = baseline.init_params(jax.random.PRNGKey(3))
    jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), mapped, ref)
    train_ds, _ = small_datasets(n_train=8)
    labels = train_ds["label"].astype(np.int32)
    loss, logits = jax.jit(baseline.loss_fn)(mapped, train_ds["image"], labels)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model(train.to_float(
        train_ds["image"]))), rtol=1e-4, atol=1e-4)
    ref_loss = train.cross_entropy_loss(logits, labels)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)


def test_bad_data_dir_is_one_error_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(HERE / "train.py"), f"--data_dir={tmp_path}",
         f"--output_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(HERE.parents[1])})
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "train-images-idx3-ubyte" in last, result.stderr
    assert "Traceback" not in result.stderr


def test_plain_jax_baseline_trains_like_flaxen():
    """From the same parameters, three steps of both train steps give the same parameters."""
    from examples.segmentation import plain_jax_baseline as baseline

    train_ds, _ = small_datasets(n_train=48)
    model = train.create_model(jax.random.PRNGKey(4))
    optimizer = train.create_optimizer(model, 3e-3)
    learning_rate_fn = train.create_learning_rate_fn(3e-3, 3, 2, 2 / 3)  # 6 steps, 2 warm-up
    params = baseline.from_flaxen(model.params)
    tx, plain_step = baseline.make_train_step(3e-3, 6, 2)
    opt_state = tx.init(params)
    for i in range(3):
        batch = {k: v[16 * i:16 * (i + 1)] for k, v in train_ds.items()}
        optimizer, m1 = train.train_step(optimizer, batch, learning_rate_fn)
        with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes dtypes
            params, opt_state, m2 = plain_step(params, opt_state, batch)
        assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
                 baseline.from_flaxen(optimizer.target.params), params)


def test_config_overrides_reach_the_run(tmp_path):
    """--config.x.y=value sets the flat flag the run reads; giving it both ways is refused."""
    data = data_folder(tmp_path)
    common = [sys.executable, str(HERE / "train.py"), f"--data_dir={data}",
              f"--cache_dir={tmp_path / 'cache'}", f"--output_dir={tmp_path / 'out'}"]
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    # 8 training canvases from the override, against the default --batch_size=16.
    result = subprocess.run(common + ["--config.data.num_train_canvases=8",
                                      "--config.data.num_test_canvases=8"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert ("Error: --batch_size=16 is larger than the training set (8 canvases)"
            in result.stderr), result.stderr[-2000:]
    result = subprocess.run(common + ["--config.batch_size=8", "--batch_size=16"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Error: --config.batch_size=8 and --batch_size=16 set the same thing" in result.stderr
    assert "Traceback" not in result.stderr


def test_cpu_devices_split_the_step_unless_xla_flags_say_otherwise(tmp_path):
    """--cpu_devices asks JAX for that many CPU devices and the run trains over all of them;
    a device count in XLA_FLAGS wins; 0 is refused."""
    data = data_folder(tmp_path)
    common = [sys.executable, str(HERE / "train.py"), f"--data_dir={data}",
              f"--cache_dir={tmp_path / 'cache'}", "--num_train_canvases=16",
              "--num_test_canvases=8", "--batch_size=8", "--num_epochs=1", "--noprogress"]
    flags_without_count = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                   if "xla_force_host_platform_device_count" not in f)
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1]), "XLA_FLAGS": flags_without_count,
           "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(common + ["--cpu_devices=2", f"--output_dir={tmp_path / 'a'}"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Data-parallel over 2 devices" in result.stderr, result.stderr[-2000:]
    counted = {**env, "XLA_FLAGS": flags_without_count
               + " --xla_force_host_platform_device_count=1"}
    result = subprocess.run(common + ["--cpu_devices=2", f"--output_dir={tmp_path / 'b'}"],
                            capture_output=True, text=True, timeout=300, env=counted)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Data-parallel" not in result.stderr, result.stderr[-2000:]
    result = subprocess.run(common + ["--cpu_devices=0", f"--output_dir={tmp_path / 'c'}"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == "Error: --cpu_devices=0: expected 1 or more."
    # 3 devices cannot split a batch of 8: one Error line that names the flag to change.
    result = subprocess.run(common + ["--cpu_devices=3", f"--output_dir={tmp_path / 'd'}"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: --batch_size=8 must be divisible by the number of devices (3)")
    assert "--cpu_devices" in last and "Traceback" not in result.stderr
