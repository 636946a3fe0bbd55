"""A few real GAN steps on a small slice of real data; the metrics against independent
references; checkpoint/resume; data parallel; the plain JAX baseline is the same model."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest
import scipy.linalg

from examples.gan import input_pipeline, quality, runs, sample, train, train_classifier
from examples.gan import plain_jax_baseline as baseline
from flaxen import metrics
from flaxen.training import checkpoints
from tests import multiprocess_util as mp

REPO = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def _fashion_mnist():
    try:
        return input_pipeline.get_datasets("fashion_mnist")
    except input_pipeline.DataError:
        return None


def small_datasets(n_train=256, n_test=200):
    """Real Fashion-MNIST when installed (first images of each split), else random images."""
    if _fashion_mnist() is not None:
        train_ds, test_ds = _fashion_mnist()
    else:
        rng = np.random.default_rng(0)
        train_ds, test_ds = ({"image": rng.uniform(0, 1, (n, 28, 28, 1)).astype(np.float32),
                              "label": rng.integers(0, 10, n).astype(np.int32)}
                             for n in (n_train, n_test))
    return ({k: v[:n_train] for k, v in train_ds.items()},
            {k: v[:n_test] for k, v in test_ds.items()})


def config(out, **kw):
    cfg = dict(learning_rate=2e-4, beta1=0.5, batch_size=64, num_epochs=1, g_features=8,
               d_features=8, conditional=True, ema_decay=0.999, dataset="fashion_mnist",
               data_dir=None, output_dir=str(out), classifier_dir="", num_eval_samples=200,
               num_train_examples=0, resume=False, seed=0, num_devices=1, progress=False)
    cfg.update(kw)
    return SimpleNamespace(**cfg)


def host(state):
    return jax.device_get(runs.unreplicate(state))


# -- The quality metrics against independent references -------------------------------------


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    for d in (1, 3, 6):
        a, b = rng.normal(size=(2, d, d))
        cov1, cov2 = a @ a.T + 0.1 * np.eye(d), b @ b.T  # cov2 may be near singular
        mean1, mean2 = rng.normal(size=(2, d))
        root = scipy.linalg.sqrtm(cov1 @ cov2)
        expected = (np.sum((mean1 - mean2) ** 2) + np.trace(cov1) + np.trace(cov2)
                    - 2 * np.trace(root).real)
        np.testing.assert_allclose(quality.frechet_distance(mean1, cov1, mean2, cov2),
                                   expected, rtol=1e-6, atol=1e-8)
        assert quality.frechet_distance(mean1, cov1, mean1, cov1) == pytest.approx(0, abs=1e-6)


def test_statistics_from_batch_sums_match_numpy():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(300, 5)).astype(np.float32) + 2.0
    logits = rng.normal(size=(300, 4)) * 3
    log_probs = (logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)).astype(np.float32)
    sums = quality.add_sums([quality.batch_sums(feats[i:i + 100], log_probs[i:i + 100])
                             for i in range(0, 300, 100)])
    mean, cov = quality.gaussian(sums)
    np.testing.assert_allclose(mean, feats.mean(0), rtol=1e-5)
    np.testing.assert_allclose(cov, np.cov(feats.astype(np.float64), rowvar=False), atol=1e-4)
    # Inception score: exp of the mean KL divergence of p(y|x) from the marginal p(y).
    p = np.exp(log_probs.astype(np.float64))
    marginal = p.mean(0)
    kl = np.sum(p * (np.log(p) - np.log(marginal)), axis=1)
    assert quality.inception_score(sums) == pytest.approx(np.exp(kl.mean()), rel=1e-5)
    # Bounds: one-hot predictions of balanced classes give the number of classes.
    onehot = np.log(np.clip(np.eye(4)[np.arange(400) % 4], 1e-30, 1)).astype(np.float32)
    sums = quality.add_sums([quality.batch_sums(np.zeros((400, 2), np.float32), onehot)])
    assert quality.inception_score(sums) == pytest.approx(4.0, rel=1e-5)


# -- Training ---------------------------------------------------------------------------------


def test_train_steps_update_both_networks_and_the_batchnorm_state():
    train_ds, _ = small_datasets()
    generator, g_state, discriminator = train.create_models(jax.random.PRNGKey(0), 8, 8)
    assert set(generator.params) == {"Dense_0", "BatchNorm_1", "Conv_2",
                                     "BatchNorm_3", "Conv_4"}
    g_opt, d_opt = train.create_optimizers(generator, discriminator, 2e-4, 0.5)
    g0, d0, s0 = jax.device_get((generator.params, discriminator.params, g_state))
    rng = np.random.RandomState(0)
    for i in range(3):
        batch = {"image": input_pipeline.to_gan_range(train_ds["image"][i * 64:(i + 1) * 64]),
                 "label": train_ds["label"][i * 64:(i + 1) * 64],
                 "noise": rng.normal(size=(64, 64)).astype(np.float32)}
        g_opt, d_opt, g_state, m = train.train_step(g_opt, d_opt, g_state, batch)
        assert all(np.isfinite(float(v)) for v in m.values())
    assert 0.0 < float(m["d_fake"]) < 1.0 and 0.0 < float(m["d_real"]) < 1.0
    assert int(g_opt.state.step) == int(d_opt.state.step) == 3
    for before, after in ((g0, g_opt.target.params), (d0, d_opt.target.params)):
        moved = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, after)
        assert all(jax.tree.leaves(moved))
    # The running statistics moved from their initial values (zeros and ones).
    assert not np.allclose(np.asarray(g_state["/BatchNorm_3"]["mean"]),
                           s0["/BatchNorm_3"]["mean"])
    images = train.generate(g_opt.target, g_state, np.zeros((4, 64), np.float32),
                            np.arange(4, dtype=np.int32))
    assert images.shape == (4, 28, 28, 1)
    assert 0.0 <= float(images.min()) <= float(images.max()) <= 1.0


def test_conditioning_follows_the_labels():
    """The generator's dense layer sees [noise, one-hot label]; the discriminator's logit is
    the plain one plus <embedding[label], features> (NumPy reference)."""
    generator, g_state, discriminator = train.create_models(jax.random.PRNGKey(3), 8, 8)
    noise = np.random.RandomState(0).normal(size=(2, 64)).astype(np.float32)
    same_noise = np.repeat(noise[:1], 2, axis=0)
    a, b = train.generate(generator, g_state, same_noise, np.array([0, 7], np.int32))
    assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) > 1e-3  # the label matters
    kernel = np.asarray(generator.params["Dense_0"]["kernel"])
    assert kernel.shape[0] == 64 + 10
    images = np.asarray(train.generate(generator, g_state, noise, np.array([2, 5], np.int32)))
    images = input_pipeline.to_gan_range(images)
    labels = np.array([2, 5], np.int32)
    logits = np.asarray(discriminator(images, labels), np.float64)
    d = discriminator.params
    x = images
    for name in ("Conv_0", "Conv_1"):
        x = jax.lax.conv_general_dilated(x, d[name]["kernel"], (2, 2), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = np.asarray(jax.nn.leaky_relu(np.asarray(x) + np.asarray(d[name]["bias"]), 0.2),
                       np.float64)
    h = x.reshape((2, -1))
    expected = (h @ np.asarray(d["Dense_2"]["kernel"], np.float64))[:, 0] + float(
        d["Dense_2"]["bias"][0])
    expected += np.sum(np.asarray(d["projection"]["embedding"], np.float64)[labels] * h, -1)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    # --noconditional: no label input, no projection.
    g_plain, _, d_plain = train.create_models(jax.random.PRNGKey(3), 8, 8, False)
    assert "projection" not in d_plain.params
    assert g_plain.params["Dense_0"]["kernel"].shape[0] == 64


def test_create_models_builds_the_generator_it_is_given():
    """bench_upsampling.py's variants: jit's cache must not hand back an earlier generator."""
    from examples.gan import bench_upsampling

    convs = []
    for kind in bench_upsampling.KINDS:
        generator, _, _ = train.create_models(jax.random.PRNGKey(0), 8, 8, True,
                                              bench_upsampling.Generator.partial(kind=kind))
        convs.append(sorted(k for k in generator.params if "Conv" in k))
    assert convs[0] == ["ConvTranspose_2", "ConvTranspose_4"]
    assert convs[1] == convs[2] == ["Conv_2", "Conv_4"]
    kernels = [train.create_models(jax.random.PRNGKey(0), 8, 8, True,
                                   bench_upsampling.Generator.partial(kind=kind))[0]
               .params["Conv_2"]["kernel"].shape for kind in ("nearest", "subpixel")]
    assert kernels == [(3, 3, 16, 8), (3, 3, 16, 32)]


def test_update_ema_matches_numpy():
    generator, g_state, _ = train.create_models(jax.random.PRNGKey(0), 8, 8)
    ema = {"generator": generator, "generator_state": g_state}
    shifted = jax.tree.map(lambda x: x + 1.0, ema)  # the "trained" generator and state
    for step, decay, expected_decay in ((1, 0.999, 2 / 11), (5000, 0.999, 5001 / 5010),
                                         (10**5, 0.999, 0.999), (7, 0.0, 0.0)):
        new = train.update_ema(ema, shifted["generator"], shifted["generator_state"], step,
                               decay)
        jax.tree.map(lambda n, e, x, d=expected_decay: np.testing.assert_allclose(
            n, d * np.asarray(e, np.float64) + (1 - d) * np.asarray(x, np.float64),
            rtol=1e-6, atol=1e-6), new, ema, shifted)
    # decay 0 copies the generator bit for bit (--ema_decay=0 scores the generator itself).
    jax.tree.map(np.testing.assert_array_equal, new, shifted)


def baseline_params(generator, g_state, discriminator):
    """The flaxen parameters in the baseline's layout."""
    g, d = generator.params, discriminator.params
    bn = lambda p: {"scale": p["scale"], "bias": p["bias"]}  # noqa: E731
    stats = lambda s: {"mean": s["mean"], "var": s["var"]}  # noqa: E731
    return ({"dense": g["Dense_0"]["kernel"], "bn1": bn(g["BatchNorm_1"]),
             "up1": g["Conv_2"]["kernel"], "bn2": bn(g["BatchNorm_3"]),
             "up2": {"w": g["Conv_4"]["kernel"], "b": g["Conv_4"]["bias"]}},
            {"bn1": stats(g_state["/BatchNorm_1"]), "bn2": stats(g_state["/BatchNorm_3"])},
            {"conv1": {"w": d["Conv_0"]["kernel"], "b": d["Conv_0"]["bias"]},
             "conv2": {"w": d["Conv_1"]["kernel"], "b": d["Conv_1"]["bias"]},
             "dense": {"w": d["Dense_2"]["kernel"], "b": d["Dense_2"]["bias"]},
             **({"projection": d["projection"]["embedding"]} if "projection" in d else {})})


@pytest.mark.parametrize("conditional", [True, False])
def test_plain_jax_baseline_trains_the_same_model(conditional):
    """The comparison in README.md is fair: same shapes, and the same three steps."""
    import optax

    train_ds, _ = small_datasets()
    generator, g_state, discriminator = train.create_models(jax.random.PRNGKey(2), 8, 8,
                                                            conditional)
    g, s, d = baseline_params(generator, g_state, discriminator)
    ref = baseline.init_params(jax.random.PRNGKey(2), 8, 8, 10 if conditional else 0)
    assert set(d) == set(ref[2]) and ("projection" in d) == conditional
    jax.tree.map(lambda a, b: np.testing.assert_equal(np.shape(a), np.shape(b)), (g, s, d), ref)
    g_opt, d_opt = train.create_optimizers(generator, discriminator, 2e-4, 0.5)
    tx = optax.adam(2e-4, b1=0.5)
    b_state = (g, d, s, tx.init(g), tx.init(d))
    ema = {"generator": generator, "generator_state": g_state}
    b_ema = (g, s)
    step = baseline.make_train_step(tx)
    rng = np.random.RandomState(1)
    for i in range(3):
        batch = {"image": input_pipeline.to_gan_range(train_ds["image"][i * 64:(i + 1) * 64]),
                 "label": train_ds["label"][i * 64:(i + 1) * 64],
                 "noise": rng.normal(size=(64, 64)).astype(np.float32)}
        g_opt, d_opt, g_state, m = train.train_step(g_opt, d_opt, g_state, batch)
        with jax.numpy_dtype_promotion("standard"):  # optax is written for standard promotion
            *b_state, bm = step(*b_state, batch)
        ema = train.update_ema(ema, g_opt.target, g_state, i + 1, 0.999)
        b_ema = baseline.update_ema(b_ema, b_state[0], b_state[2], i + 1, 0.999)
        for k in m:
            np.testing.assert_allclose(float(m[k]), float(bm[k]), rtol=1e-4, atol=1e-6)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)  # noqa: E731
    jax.tree.map(close, baseline_params(g_opt.target, g_state, d_opt.target),
                 (b_state[0], b_state[2], b_state[1]))
    jax.tree.map(close, baseline_params(ema["generator"], ema["generator_state"],
                                        d_opt.target)[:2], b_ema)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A classifier trained for one epoch on the small set by train_classifier.py's code."""
    out = tmp_path_factory.mktemp("classifier")
    train_ds, test_ds = small_datasets(n_train=512)
    cfg = SimpleNamespace(learning_rate=0.1, batch_size=64, num_epochs=1, output_dir=str(out),
                          seed=0, num_devices=1, progress=False)
    model, _ = train_classifier.train(train_ds, test_ds, cfg)
    floor = train_classifier.real_data_floor(model, train_ds, test_ds, 0, None)
    assert 1.0 <= floor["inception_score_test"] <= 10.0 and floor["fid_train_vs_test"] >= 0
    return str(out)


def test_resume_gives_the_same_result(tmp_path, classifier_dir):
    train_ds, test_ds = small_datasets()
    kw = dict(classifier_dir=classifier_dir)
    straight = train.train(train_ds, test_ds, config(tmp_path / "a", num_epochs=2, **kw))
    train.train(train_ds, test_ds, config(tmp_path / "b", num_epochs=1, **kw))
    resumed = train.train(train_ds, test_ds, config(tmp_path / "b", num_epochs=2, resume=True,
                                                    **kw))
    jax.tree.map(np.testing.assert_array_equal, host(straight), host(resumed))
    out = tmp_path / "b"
    rows = metrics.read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    a_rows = metrics.read_jsonl(tmp_path / "a" / "metrics.jsonl")
    for key in ("fid", "inception_score", "d_loss", "g_loss"):
        assert rows[1][key] == a_rows[1][key], key
    assert 1.0 <= rows[1]["inception_score"] <= 10.0 and rows[1]["fid"] > 0
    steps = metrics.read_jsonl(out / "train_steps.jsonl")
    assert [r["step"] for r in steps] == [4, 8]  # 4 steps per epoch: one row at each end
    scalars = metrics.read_scalars(out / "tensorboard")
    assert [s for s, _ in scalars["fid"]] == [1, 2]
    for png in ("samples/epoch_001.png", "samples/epoch_002.png", "samples.png", "curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint_1", "checkpoint_2"]
    # sample.py reads the generator and its state back from the checkpoint.
    generator, g_state, seed = sample.load(str(out), 2)
    _, _, _, ema = host(resumed)
    jax.tree.map(np.testing.assert_array_equal, ema["generator"].params, generator.params)
    jax.tree.map(np.testing.assert_array_equal, ema["generator_state"], g_state)
    assert seed == 0
    # Another configuration in the same folder is refused, with the flag named.
    with pytest.raises(runs.UsageError, match="--seed=1 .the run has 0"):
        train.train(train_ds, test_ds, config(out, num_epochs=3, resume=True, seed=1, **kw))


def test_data_parallel_matches_single_device(tmp_path):
    assert jax.local_device_count() == 8  # the root conftest simulates 8 CPU devices
    train_ds, test_ds = small_datasets(n_train=128)
    one = train.train(train_ds, test_ds, config(tmp_path / "1", num_devices=1))
    eight = train.train(train_ds, test_ds, config(tmp_path / "8", num_devices=0))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 host(one), host(eight))
    with pytest.raises(runs.UsageError, match="divisible by the number of devices"):
        train.train(train_ds, test_ds, config(tmp_path / "x", batch_size=60, num_devices=8))


def test_user_errors_are_one_clean_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples/gan/train.py"), f"--data_dir={tmp_path}",
         f"--output_dir={tmp_path / 'out'}"], capture_output=True, text=True, env=env,
        timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "Traceback" not in proc.stderr
    assert "train-images-idx3-ubyte" in proc.stderr


@pytest.mark.skipif(_fashion_mnist() is None, reason="apt-get install dataset-fashion-mnist")
def test_config_overrides_reach_the_run(tmp_path):
    """--config.x.y=value sets the flat flag (config.json records it); both ways is an error."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = str(REPO / "examples/gan/train.py")
    proc = subprocess.run(
        [sys.executable, script, "--config.model.g_features=8", "--config.model.d_features=8",
         "--config.data.num_train_examples=128", "--config.num_epochs=1",
         "--config.model.ema_decay=0.5", "--classifier_dir=", "--noprogress",
         f"--output_dir={tmp_path / 'out'}"], capture_output=True, text=True, env=env,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (saved["g_features"], saved["d_features"], saved["num_train_examples"],
            saved["ema_decay"]) == (8, 8, 128, 0.5)
    assert len(metrics.read_jsonl(tmp_path / "out" / "metrics.jsonl")) == 1  # num_epochs=1
    proc = subprocess.run([sys.executable, script, "--config.model.g_features=8",
                           "--g_features=16", f"--output_dir={tmp_path / 'x'}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert ("Error: --config.model.g_features=8 and --g_features=16 set the same thing"
            in proc.stderr)


def test_config_file_names_the_run(tmp_path):
    runs.prepare_output_dir(str(tmp_path), {"seed": 0}, resume=False)
    assert json.loads((tmp_path / "config.json").read_text()) == {"seed": 0}


@pytest.mark.slow
@pytest.mark.skipif(_fashion_mnist() is None, reason="apt-get install dataset-fashion-mnist")
def test_two_processes_train_like_one(tmp_path):
    """train.py over 2 processes x 2 CPU devices gives the parameters of a 1-device run."""
    data_dir = str(input_pipeline.find_data_dir("fashion_mnist", None))
    common = ["examples/gan/train.py", f"--data_dir={data_dir}",
              "--num_train_examples=128", "--num_epochs=1", "--g_features=8",
              "--d_features=8", "--classifier_dir=", "--noprogress"]
    single = mp.run_single(common + [f"--output_dir={tmp_path / 'one'}"], 1,
                           tmp_path / "logs", timeout=600)
    mp.check_all_ok([single])
    results = mp.run(common + [f"--output_dir={tmp_path / 'two'}"], 2, 2, tmp_path / "logs",
                     timeout=600)
    mp.check_all_ok(results)
    assert "4 devices in all" in results[0].output
    one = checkpoints.restore_checkpoint(tmp_path / "one" / "checkpoints", None)
    two = checkpoints.restore_checkpoint(tmp_path / "two" / "checkpoints", None)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), one, two)
    assert len(metrics.read_jsonl(tmp_path / "two" / "metrics.jsonl")) == 1  # process 0 only
