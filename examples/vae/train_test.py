"""The VAE example: loss and bound against NumPy references, a few real training steps,
bit-exact resume, data parallel, the command line, and (slow) two processes."""

import gzip
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from examples.vae import input_pipeline, train
from flaxen import metrics
from tests import multiprocess_util as mp

REPO = Path(__file__).resolve().parents[2]


def real_test_images():
    """Grey test images ``(N, 28, 28)`` uint8 and labels of a real dataset found here."""
    folders = [Path(input_pipeline.FASHION_MNIST_SYSTEM_DIR)]
    if os.environ.get("FLAXEN_DATA"):
        folders.append(Path(os.environ["FLAXEN_DATA"]) / "mnist-t10k")
    for folder in folders:
        if (folder / "t10k-images-idx3-ubyte.gz").is_file():
            return (input_pipeline.read_idx(folder / "t10k-images-idx3-ubyte.gz"),
                    input_pipeline.read_idx(folder / "t10k-labels-idx1-ubyte.gz"))
    pytest.skip("no real images: apt-get install dataset-fashion-mnist, or set FLAXEN_DATA")


def small_datasets(n_train=512, n_test=256):
    """Binarised real images: the first ``n_train`` as training set, the last ``n_test``."""
    images, labels = real_test_images()
    ds = {"image": input_pipeline.binarize(images, 0), "label": labels.astype(np.int32)}
    return ({k: v[:n_train] for k, v in ds.items()}, {k: v[-n_test:] for k, v in ds.items()})


def config(tmp_path, **kw):
    cfg = dict(dataset="fashion_mnist", data_dir=None, output_dir=str(tmp_path), resume=False,
               num_epochs=1, batch_size=64, learning_rate=1e-3, latents=20, hidden=500,
               iwae_samples=0, seed=0, num_train_examples=0, num_devices=1, progress=False)
    cfg.update(kw)
    return SimpleNamespace(**cfg)


def params_of(optimizer):
    return jax.device_get(optimizer.target.params)


def np_hidden(p, x):
    """relu(x @ kernel + bias) of the `hidden` Dense layer of ``p``, in NumPy."""
    h = np.maximum(x @ np.float64(p["hidden"]["kernel"]) + p["hidden"]["bias"], 0)
    return h


def call(method, model, *args):
    """``model.<method>(*args)`` under jit (one compile instead of many eager ops)."""
    return jax.jit(lambda m, *a: getattr(m, method)(*a))(model, *args)


def np_sigmoid(v):
    return 1 / (1 + np.exp(-v))


def test_model_methods_match_numpy():
    """encode, decode and generate are module_methods on the one set of parameters."""
    model = train.create_model(jax.random.PRNGKey(0), latents=5, hidden=16)
    p = jax.device_get(model.params)
    assert set(p) == {"encoder", "decoder"}
    assert set(p["encoder"]) == {"hidden", "mean", "logvar"}
    assert set(p["decoder"]) == {"hidden", "logits"}
    _, test_ds = small_datasets(n_test=8)
    x = test_ds["image"].astype(np.float32)
    h = np_hidden(p["encoder"], x)
    mean, logvar = call("encode", model, x)
    np.testing.assert_allclose(mean, h @ p["encoder"]["mean"]["kernel"] + p["encoder"]["mean"]
                               ["bias"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logvar, h @ p["encoder"]["logvar"]["kernel"]
                               + p["encoder"]["logvar"]["bias"], rtol=1e-4, atol=1e-5)
    z = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    logits = np_hidden(p["decoder"], z) @ p["decoder"]["logits"]["kernel"] + p["decoder"]["logits"][
        "bias"]
    np.testing.assert_allclose(call("decode", model, z), logits, rtol=1e-4, atol=1e-4)
    images = call("generate", model, z)
    assert images.shape == (8, 28, 28)
    np.testing.assert_allclose(images, np_sigmoid(logits).reshape((8, 28, 28)), atol=1e-5)


def test_negative_elbo_and_iwae_match_numpy():
    model = train.create_model(jax.random.PRNGKey(1), latents=4, hidden=32)
    _, test_ds = small_datasets(n_test=6)
    x = test_ds["image"].astype(np.float32)
    key = jax.random.PRNGKey(7)
    loss, rec, kl = jax.jit(train.negative_elbo)(model, x, key)
    # The model draws its noise with nn.make_rng(): the first key of the scope is fold_in(key, 1).
    eps = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (6, 4)), np.float64)
    mean, logvar = (np.asarray(a, np.float64) for a in call("encode", model, x))
    z = mean + np.exp(0.5 * logvar) * eps
    probs = np_sigmoid(np.asarray(call("decode", model, z.astype(np.float32)), np.float64))
    ref_rec = -np.sum(np.log(np.where(x == 1, probs, 1 - probs)), -1)
    np.testing.assert_allclose(rec, ref_rec, rtol=1e-4)
    # KL(q || N(0, I)) against a Monte Carlo estimate E_q[log q(z) - log p(z)].
    draws = mean + np.exp(0.5 * logvar) * np.random.default_rng(0).normal(size=(200_000, 6, 4))
    log_q = -0.5 * (((draws - mean) ** 2) / np.exp(logvar) + logvar + np.log(2 * np.pi))
    log_p = -0.5 * (draws**2 + np.log(2 * np.pi))
    np.testing.assert_allclose(kl, np.mean(np.sum(log_q - log_p, -1), 0), rtol=0.02, atol=0.02)
    np.testing.assert_allclose(loss, rec + kl, rtol=1e-6)
    # IWAE: log (1/k) sum_i p(x, z_i) / q(z_i | x) with the step's own draws.
    k = 3
    batch = {"image": test_ds["image"], "mask": np.ones(6, np.float32)}
    total = train.iwae_step(model, batch, key, k)
    eps = np.asarray(jax.random.normal(key, (k, 6, 4)), np.float64)
    z = mean + np.exp(0.5 * logvar) * eps
    probs = np_sigmoid(np.asarray(call("decode", model, z.reshape(-1, 4).astype(np.float32)),
                                  np.float64)).reshape(k, 6, -1)
    log_px_z = np.sum(np.log(np.where(x == 1, probs, 1 - probs)), -1)
    log_pz = np.sum(-0.5 * (z**2 + np.log(2 * np.pi)), -1)
    log_qz = np.sum(-0.5 * (eps**2 + logvar + np.log(2 * np.pi)), -1)
    log_w = log_px_z + log_pz - log_qz
    ref = np.sum(np.log(np.mean(np.exp(log_w - log_w.max(0)), 0)) + log_w.max(0))
    np.testing.assert_allclose(total, ref, rtol=1e-5)


def test_train_steps_reduce_loss_and_iwae_is_tighter():
    train_ds, test_ds = small_datasets()
    key = jax.random.PRNGKey(0)
    optimizer = train.create_optimizer(train.create_model(key), 1e-3)
    before = train.eval_model(optimizer.target, test_ds, key)
    assert 400 < before["loss"] < 700  # about 784 * ln 2 = 543 nats at initialisation
    losses = []
    for i in range(8):
        batch = {"image": train_ds["image"][i * 64:(i + 1) * 64]}
        optimizer, m = train.train_step(optimizer, batch, key)
        losses.append(float(m["loss"]))
        np.testing.assert_allclose(m["loss"], m["reconstruction"] + m["kl"], rtol=1e-5)
    after = train.eval_model(optimizer.target, test_ds, key)
    assert after["loss"] < before["loss"] - 100 and losses[-1] < losses[0] - 100
    assert int(optimizer.state.step) == 8
    iwae = train.iwae_nll(optimizer.target, test_ds, key, k=20)
    assert after["loss"] - 100 < iwae < after["loss"]  # a tighter bound, not a wild one


def test_resume_is_bit_exact_and_writes_everything(tmp_path):
    train_ds, test_ds = small_datasets()
    straight = train.train(train_ds, test_ds, config(tmp_path / "a", num_epochs=2))
    train.train(train_ds, test_ds, config(tmp_path / "b", num_epochs=1))
    resumed = train.train(train_ds, test_ds, config(tmp_path / "b", num_epochs=2, resume=True,
                                                    iwae_samples=4))
    jax.tree.map(np.testing.assert_array_equal, params_of(straight), params_of(resumed))
    assert int(resumed.state.step) == 2 * (512 // 64)
    out = tmp_path / "b"
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint_1", "checkpoint_2"]
    rows = metrics.read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and len(rows[1]["train_loss_steps"]) == 8
    a_rows = metrics.read_jsonl(tmp_path / "a" / "metrics.jsonl")
    assert rows[1]["test_loss"] == a_rows[1]["test_loss"]
    assert rows[1]["iwae_samples"] == 4 and rows[1]["test_iwae_nll"] < rows[1]["test_loss"]
    scalars = metrics.read_scalars(out / "tensorboard")
    assert [s for s, _ in scalars["test_loss"]] == [1, 2]
    for name in ("learning_curves.png", "reconstructions.png", "samples.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # The trained model, back from its checkpoint, samples through its module_method.
    model = train.load_model(str(out))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(model.params), params_of(resumed))
    assert call("generate", model, np.zeros((3, 20), np.float32)).shape == (3, 28, 28)
    with pytest.raises(train.ConfigError, match=r"--learning_rate=0.001 -> 0.002"):
        train.train(train_ds, test_ds, config(out, num_epochs=3, resume=True,
                                              learning_rate=2e-3))


def test_data_parallel_matches_single_device(tmp_path):
    assert jax.local_device_count() == 8  # the root conftest simulates 8 CPU devices
    train_ds, test_ds = small_datasets(n_train=256, n_test=200)
    one = train.train(train_ds, test_ds, config(tmp_path / "1", num_devices=1))
    eight = train.train(train_ds, test_ds, config(tmp_path / "8", num_devices=0))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
                 params_of(one), params_of(eight))
    r1 = metrics.read_jsonl(tmp_path / "1" / "metrics.jsonl")[0]
    r8 = metrics.read_jsonl(tmp_path / "8" / "metrics.jsonl")[0]
    assert r8["test_loss"] == pytest.approx(r1["test_loss"], rel=1e-4)
    with pytest.raises(train.ConfigError, match="divisible by the number of devices"):
        train.train(train_ds, test_ds, config(tmp_path / "x", batch_size=60, num_devices=8))


def test_plain_jax_baseline_is_the_same_model_and_loss():
    from examples.vae import plain_jax_baseline as baseline

    model = train.create_model(jax.random.PRNGKey(3))
    p = model.params
    mapped = {f"{a}_{b}": {"w": p[part][b]["kernel"], "b": p[part][b]["bias"]}
              for part, a in (("encoder", "enc"), ("decoder", "dec")) for b in p[part]}
    ref = jax.jit(baseline.init_params)(jax.random.PRNGKey(3))
    jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), mapped, ref)
    _, test_ds = small_datasets(n_test=16)
    x = test_ds["image"].astype(np.float32)
    key = jax.random.PRNGKey(5)
    np.testing.assert_allclose(jax.jit(baseline.neg_elbo)(mapped, x, jax.random.fold_in(key, 1)),
                               jax.jit(train.negative_elbo)(model, x, key)[0], rtol=1e-5)


def write_idx_folder(folder, n_train=512, n_test=128):
    """The four IDX files (gzip) of a small dataset cut from real test images."""
    images, labels = real_test_images()
    folder.mkdir(parents=True)
    for stem, data in (("train-images-idx3-ubyte", images[:n_train]),
                       ("train-labels-idx1-ubyte", labels[:n_train]),
                       ("t10k-images-idx3-ubyte", images[-n_test:]),
                       ("t10k-labels-idx1-ubyte", labels[-n_test:])):
        header = bytes([0, 0, 8, data.ndim]) + b"".join(d.to_bytes(4, "big") for d in data.shape)
        (folder / (stem + ".gz")).write_bytes(gzip.compress(header + data.tobytes()))


def run_cli(*args, env=None, timeout=240):
    return subprocess.run([sys.executable, str(REPO / "examples/vae/train.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_command_line_errors_are_one_clean_line(tmp_path):
    missing = run_cli(f"--data_dir={tmp_path / 'nowhere'}", f"--output_dir={tmp_path / 'o'}")
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert "Error: fashion_mnist not found" in missing.stderr and "--data_dir" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = run_cli("--process_id=1", f"--output_dir={tmp_path / 'o'}")
    assert bad.returncode == 2 and "Error: --num_processes and --process_id need" in bad.stderr


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    """2 processes x 2 CPU devices (gloo collectives on 127.0.0.1) give the parameters of
    one process on 4 devices; only process 0 writes."""
    data = tmp_path / "data"
    write_idx_folder(data)
    common = [f"--data_dir={data}", "--num_epochs=1", "--batch_size=64", "--iwae_samples=4",
              "--noprogress"]
    train_py = "examples/vae/train.py"
    mp.check_all_ok(mp.run([train_py, *common, f"--output_dir={tmp_path / 'multi'}"], 2, 2,
                           tmp_path / "logs", timeout=300))
    single = mp.run_single([train_py, *common, f"--output_dir={tmp_path / 'single'}"], 4,
                           tmp_path / "logs", timeout=300)
    mp.check_all_ok([single])
    multi_model = train.load_model(str(tmp_path / "multi"))
    single_model = train.load_model(str(tmp_path / "single"))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 jax.device_get(multi_model.params), jax.device_get(single_model.params))
    rows = metrics.read_jsonl(tmp_path / "multi" / "metrics.jsonl")
    single_rows = metrics.read_jsonl(tmp_path / "single" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1]  # written once, by process 0
    assert rows[0]["test_loss"] == pytest.approx(single_rows[0]["test_loss"], rel=1e-4)
    assert rows[0]["test_iwae_nll"] == pytest.approx(single_rows[0]["test_iwae_nll"], rel=1e-4)
    assert len(os.listdir(tmp_path / "multi" / "tensorboard")) == 1
