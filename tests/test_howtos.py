"""Every HOWTO diff in docs/howtos/ applies to its example, and the changed example does what
the HOWTO claims.

Each test copies the repository's ``examples/`` and ``flaxen/`` into a temporary folder,
applies one diff there with ``git apply``, and runs the changed example in a subprocess (so
the patched copy, not the repository's example, is what runs) for a few steps on 512 real MNIST
test digits from ``$FLAXEN_DATA/mnist-t10k`` (skipped, with the reason, when they are not
there). Then it checks the HOWTO's claim numerically. When a change to an example breaks a
diff, regenerate it: ``python scripts/regen_howto.py NAME`` (docs/howtos/index.md).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from examples.mnist import input_pipeline
from flaxen import metrics

REPO = Path(__file__).resolve().parents[1]
HOWTOS = sorted((REPO / "docs" / "howtos").glob("*.diff"))
TRAIN_FLAGS = ["--dataset=idx", "--num_epochs=1", "--batch_size=64", "--noprogress",
               "--num_devices=1"]


def write_small_idx_dir(mnist_t10k: Path, folder: Path, n_train: int = 512,
                        n_test: int = 128) -> None:
    """Four IDX files cut from the real MNIST test digits (``$FLAXEN_DATA/mnist-t10k``)."""
    images = input_pipeline.parse_idx(
        gzip.decompress((mnist_t10k / "t10k-images-idx3-ubyte.gz").read_bytes()))
    labels = input_pipeline.parse_idx(
        gzip.decompress((mnist_t10k / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    folder.mkdir(parents=True)
    for prefix, sl in (("train", slice(0, n_train)), ("t10k", slice(-n_test, None))):
        for kind, arr in (("images-idx3", images[sl]), ("labels-idx1", labels[sl])):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(
                int(d).to_bytes(4, "big") for d in arr.shape)
            (folder / f"{prefix}-{kind}-ubyte").write_bytes(header + arr.tobytes())


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """One JAX compilation cache for the module's subprocesses: runs of the same program
    (the same HOWTO with other flags, a resumed run) load it instead of compiling again."""
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def digits(tmp_path_factory, request):
    """A folder of four small IDX files of real digits (512 train, 128 test)."""
    root = os.environ.get("FLAXEN_DATA")
    folder = Path(root or "").resolve() / "mnist-t10k"
    if not root or not folder.is_dir():
        pytest.skip("needs real data 'mnist-t10k': set FLAXEN_DATA to the shared data folder")
    out = tmp_path_factory.mktemp("digits") / "idx"
    write_small_idx_dir(folder, out)
    return out


class Patched:
    """A copy of ``examples/`` and ``flaxen/`` with one HOWTO diff applied."""

    def __init__(self, name: str, root: Path, compile_cache: Path | None = None):
        if shutil.which("git") is None:
            pytest.skip("git is not installed")
        self.root = root
        for folder in ("examples", "flaxen"):
            shutil.copytree(REPO / folder, root / folder,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        diff = REPO / "docs" / "howtos" / f"{name}.diff"
        out = subprocess.run(["git", "apply", "--verbose", str(diff)], cwd=root,
                             capture_output=True, text=True)
        assert out.returncode == 0, (f"{diff.name} no longer applies; regenerate it with "
                                     f"python scripts/regen_howto.py {name}:\n{out.stderr}")
        self.env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
        self.env.update(PYTHONPATH=str(root), JAX_PLATFORMS="cpu")
        if compile_cache is not None:
            self.env.update(JAX_COMPILATION_CACHE_DIR=str(compile_cache),
                            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

    def train(self, data: Path, out: Path, *flags: str, timeout: float = 300,
              env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Runs the patched ``examples/mnist/train.py`` (one CPU device, as a script)."""
        cmd = [sys.executable, "examples/mnist/train.py", f"--data_dir={data}",
               f"--output_dir={out}", *TRAIN_FLAGS, *flags]
        result = subprocess.run(cmd, cwd=self.root, env={**self.env, **(env or {})},
                                capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, result.stderr[-3000:]
        return result

    def start(self, data: Path, out: Path, log: Path, *flags: str) -> subprocess.Popen:
        """Starts the patched example in the background, its output going to ``log``."""
        cmd = [sys.executable, "examples/mnist/train.py", f"--data_dir={data}",
               f"--output_dir={out}", *TRAIN_FLAGS, *flags]
        with open(log, "w") as f:  # a file, not a pipe: a full pipe would stall the run
            return subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=f,
                                    stderr=subprocess.STDOUT)

    def python(self, code: str, timeout: float = 300) -> dict:
        """Runs ``code`` in the patched copy; returns the JSON it prints on its last line."""
        result = subprocess.run([sys.executable, "-c", code], cwd=self.root, env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def patched(tmp_path, compile_cache):
    """``patched(name)``: a Patched copy in this test's temporary folder."""
    return lambda name: Patched(name, tmp_path / "repo", compile_cache)


def rows_of(out: Path) -> list[dict]:
    return metrics.read_jsonl(out / "metrics.jsonl")


def test_every_howto_has_a_page_and_an_index_line():
    names = [p.stem for p in HOWTOS]
    assert len(names) >= 9 and "polyak_averaging" in names
    index = (REPO / "docs" / "howtos" / "index.md").read_text()
    readme = (REPO / "README.md").read_text()
    for name in names:
        page = REPO / "docs" / "howtos" / f"{name}.md"
        assert page.is_file(), f"{name}.diff needs a page"
        assert f"({name}.md)" in index, f"docs/howtos/index.md does not list {name}"
        assert f"docs/howtos/{name}.md" in readme, f"README.md does not list {name}"


@pytest.mark.parametrize("diff", HOWTOS, ids=[p.stem for p in HOWTOS])
def test_howto_applies(diff, tmp_path):
    Patched(diff.stem, tmp_path)


def test_polyak_averaging_evaluates_the_average(tmp_path, digits, patched):
    ex = patched("polyak_averaging")
    result = ex.train(digits, tmp_path / "out")
    row = rows_of(tmp_path / "out")[0]
    assert "polyak eval epoch: 1" in result.stderr
    assert row["test_accuracy"] > 0.2
    # The average lags the parameters (decay 0.99 over 8 steps), so it evaluates differently.
    assert 0.0 <= row["polyak_test_accuracy"] <= 1.0
    assert row["polyak_test_loss"] != row["test_loss"]


def test_lr_schedule_follows_warmup_cosine_without_recompiling(tmp_path, digits, patched):
    ex = patched("lr_schedule")
    result = ex.train(digits, tmp_path / "out", "--num_epochs=2", "--warmup_steps=5",
                      "--learning_rate=0.1", env={"JAX_LOG_COMPILES": "1"})
    rows = rows_of(tmp_path / "out")
    lrs = [lr for r in rows for lr in r["train_learning_rate_per_step"]]
    total, warmup = 16, 5  # 2 epochs of 512 // 64 steps
    expected = [0.1 * (s + 1) / warmup if s < warmup else
                0.05 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
                for s in range(total)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6, atol=1e-8)
    assert max(lrs) == pytest.approx(0.1) and lrs[-1] < 0.003
    compiles = re.findall(r"Compiling jit\(train_step\)", result.stderr)
    assert len(compiles) == 1, f"train_step compiled {len(compiles)} times for 16 rates"
    assert rows[-1]["test_accuracy"] > 0.2


GRAD_ACCUM_CHECK = """
import json, sys
import jax, jax.numpy as jnp
from examples.mnist import input_pipeline, train
train_ds, _, _ = input_pipeline.get_datasets('idx', sys.argv[1])
batch = {k: v[:256] for k, v in train_ds.items()}
model = train.create_model(jax.random.PRNGKey(0))
# Reference: plain jax.grad of the mean loss over the whole batch of 256.
ref = jax.jit(jax.grad(lambda m: train.cross_entropy_loss(m(batch['image']), batch['label'])))(
    model)
acc, _ = jax.jit(train.accumulated_gradient, static_argnums=2)(model, batch, 4)
err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(acc),
                                                          jax.tree.leaves(ref)))
size = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(ref))
opt = train.create_optimizer(model, 0.1, 0.9)
def temp_bytes(k):
    compiled = train.train_step.lower(opt, batch, k).compile()
    return compiled.memory_analysis().temp_size_in_bytes
print(json.dumps({'err': err, 'size': size, 'temp': {k: temp_bytes(k) for k in (1, 4)}}))
"""


def test_grad_accum_equals_the_big_batch_gradient_in_less_memory(tmp_path, digits, patched):
    ex = patched("grad_accum")
    r = ex.python(GRAD_ACCUM_CHECK.replace("sys.argv[1]", repr(str(digits))))
    assert r["err"] <= 1e-6 * max(1.0, r["size"]), r  # float32 summation order only
    assert r["size"] > 1e-3  # a real gradient, not zeros
    # Four micro-batches of 64 keep a quarter of the activations of one batch of 256.
    assert r["temp"]["4"] < 0.5 * r["temp"]["1"], r["temp"]
    ex.train(digits, tmp_path / "out", "--accum_steps=4")
    assert rows_of(tmp_path / "out")[0]["test_accuracy"] > 0.2


BFLOAT16_CHECK = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from examples.mnist import input_pipeline, train
train_ds, _, _ = input_pipeline.get_datasets('idx', sys.argv[1])
batch = {k: v[:64] for k, v in train_ds.items()}
model = train.create_model(jax.random.PRNGKey(0))
f32 = np.asarray(model(batch['image']))
bf16 = np.asarray(model(batch['image'], dtype=jnp.bfloat16))
opt = train.create_optimizer(model, 0.1, 0.9)
hlo = train.train_step.lower(opt, None, batch, 'bfloat16').as_text()
opt, _, m = train.train_step(opt, None, batch, 'bfloat16')
print(json.dumps({'diff': float(np.max(np.abs(f32 - bf16))), 'out_dtype': str(bf16.dtype),
                  'bf16_convs': hlo.count('bf16') > 0 and 'convolution' in hlo,
                  'param_dtypes': sorted({str(p.dtype) for p in jax.tree.leaves(opt.target)}),
                  'loss': float(m['loss'])}))
"""


def test_mixed_precision_bfloat16_and_float16_with_dynamic_scale(tmp_path, digits, patched):
    ex = patched("mixed_precision")
    r = ex.python(BFLOAT16_CHECK.replace("sys.argv[1]", repr(str(digits))))
    # bfloat16 compute changes the log-probabilities a little (8 mantissa bits), not much.
    assert 0 < r["diff"] < 0.1 and r["out_dtype"] == "float32", r
    assert r["bf16_convs"] and r["param_dtypes"] == ["float32"], r
    assert r["loss"] < 2.5
    # float16 with a loss scale of 2**24: the scaled gradients overflow float16, those steps
    # are skipped and the scale halves, until the gradients fit; then training proceeds.
    out = tmp_path / "out"
    ex.train(digits, out, "--precision=float16", "--loss_scale=16777216", "--num_epochs=2")
    rows = rows_of(out)
    finite = [f for r in rows for f in r["train_finite_per_step"]]
    scales = [s for r in rows for s in r["train_loss_scale_per_step"]]
    assert finite[0] == 0.0 and sum(finite) >= 4, finite
    previous = 2.0**24
    for ok, scale in zip(finite, scales):  # halves exactly on a skipped step, else stays
        assert scale == (previous if ok else previous / 2), (finite, scales)
        previous = scale
    ckpt = ex.python("import json; from flaxen.training import checkpoints; "
                     f"c = checkpoints.restore_checkpoint({str(out / 'checkpoints')!r}, None); "
                     "print(json.dumps({'step': int(c['state']['step']), 'dtypes': sorted("
                     "{str(p.dtype) for l in c['target']['params'].values() "
                     "for p in l.values()})}))")
    assert ckpt["step"] == sum(finite), (ckpt, finite)  # skipped steps do not count
    assert ckpt["dtypes"] == ["float32"]
    assert rows[-1]["test_accuracy"] > 0.2, rows[-1]


def test_ensemble_members_differ_and_each_learns(tmp_path, digits, patched):
    ex = patched("ensemble")
    out = tmp_path / "out"
    ex.train(digits, out, "--ensemble_size=3")
    row = rows_of(out)[0]
    for i in range(3):
        losses = row[f"train_loss_member{i}_per_step"]
        assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.3, (i, losses)
        assert row[f"test_accuracy_member{i}"] > 0.2, row
    kernels = ex.python(
        "import json, numpy as np; from flaxen.training import checkpoints; "
        f"c = checkpoints.restore_checkpoint({str(out / 'checkpoints')!r}, None); "
        "k = np.asarray(c['target']['params']['Conv_0']['kernel']); "
        "print(json.dumps({'shape': list(k.shape), 'gaps': [float(np.max(np.abs(k[i] - k[j]))) "
        "for i in range(3) for j in range(i + 1, 3)]}))")
    assert kernels["shape"] == [3, 3, 3, 1, 32]  # three members stacked on a leading axis
    assert min(kernels["gaps"]) > 0.05, kernels  # different initial keys, different models
    # The ensemble (mean of the members' probabilities) is at least as good as its worst member.
    assert row["test_accuracy"] >= min(row[f"test_accuracy_member{i}"] for i in range(3))


DROPOUT_BN_CHECK = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from examples.mnist import input_pipeline, train
train_ds, _, _ = input_pipeline.get_datasets('idx', sys.argv[1])
batch = {k: v[:64] for k, v in train_ds.items()}
model, state = train.create_model(jax.random.PRNGKey(0))
opt = train.create_optimizer(model, 0.1, 0.9)
a, _ = model.call_with_state(state, batch['image'], train=True, _rng=jax.random.PRNGKey(1))
b, _ = model.call_with_state(state, batch['image'], train=True, _rng=jax.random.PRNGKey(2))
e1, _ = model.call_with_state(state, batch['image'], _mutable=False)
e2, _ = model.call_with_state(state, batch['image'], _mutable=False)
_, new_state, _ = train.train_step(opt, state, batch, jax.random.PRNGKey(3))
# Reference: 0.1 x the batch mean of Conv_0's output (momentum 0.9, running mean from 0).
p = model.params['Conv_0']
y = lax.conv_general_dilated(batch['image'], p['kernel'], (1, 1), 'SAME',
                             dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + p['bias']
stats = {k.strip('/'): v for k, v in new_state.as_dict().items()}
got = np.asarray(stats['BatchNorm_1']['mean'])
print(json.dumps({'dropout_gap': float(jnp.max(jnp.abs(a - b))),
                  'eval_gap': float(jnp.max(jnp.abs(e1 - e2))),
                  'mean_err': float(np.max(np.abs(got - 0.1 * np.asarray(y).mean((0, 1, 2))))),
                  'mean_size': float(np.max(np.abs(got)))}))
"""


def test_dropout_and_batchnorm_state_and_randomness(tmp_path, digits, patched):
    ex = patched("dropout_batchnorm")
    r = ex.python(DROPOUT_BN_CHECK.replace("sys.argv[1]", repr(str(digits))))
    assert r["dropout_gap"] > 0.01, r  # training: dropout draws from the key
    assert r["eval_gap"] == 0.0, r  # evaluation: deterministic, running statistics
    assert r["mean_size"] > 1e-3 and r["mean_err"] < 1e-5, r
    out = tmp_path / "out"
    ex.train(digits, out)
    assert rows_of(out)[0]["test_accuracy"] > 0.2
    saved = ex.python("import json, numpy as np; from flaxen.training import checkpoints; "
                      f"c = checkpoints.restore_checkpoint({str(out / 'checkpoints')!r}, None); "
                      "s = {k.strip('/'): v for k, v in c['state'].items()}; "
                      "print(json.dumps({k: [float(np.abs(np.asarray(v['mean'])).max()), "
                      "float(np.abs(np.asarray(v['var']) - 1).max())] for k, v in s.items()}))")
    # The checkpoint holds the running statistics, moved away from their initial 0 and 1.
    assert sorted(saved) == ["BatchNorm_1", "BatchNorm_3"]
    assert all(m > 1e-3 and v > 1e-3 for m, v in saved.values()), saved


PARAMS_OF = ("import json, numpy as np; from flaxen.training import checkpoints; "
             "c = checkpoints.restore_checkpoint({path!r}, None); "
             "np.savez({npz!r}, **{{f'{{l}}/{{n}}': np.asarray(a) "
             "for l, d in c['target']['params'].items() for n, a in d.items()}}); "
             "print(json.dumps({{'step': int(c['state'].get('step', -1))}}))")


def params_of(ex: Patched, ckpt_dir: Path, tmp_path: Path) -> tuple[dict, int]:
    npz = tmp_path / f"params_{len(list(tmp_path.glob('params_*')))}.npz"
    info = ex.python(PARAMS_OF.format(path=str(ckpt_dir), npz=str(npz)))
    return dict(np.load(npz)), info["step"]


def test_preemption_sigterm_saves_and_resume_is_exact(tmp_path, digits, patched):
    ex = patched("preemption")
    out = tmp_path / "preempted"
    log = tmp_path / "preempted.log"
    proc = ex.start(digits, out, log, "--num_epochs=100", "--checkpoint_every_steps=5")
    try:
        deadline = time.time() + 240
        while not (out / "checkpoints" / "checkpoint_5").exists():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = log.read_text()
    assert proc.returncode == 143, stderr[-3000:]
    saved = re.search(r"saved a checkpoint at step (\d+)", stderr)
    assert saved, stderr[-3000:]
    step = int(saved[1])
    assert (out / "checkpoints" / f"checkpoint_{step}").exists()
    # Resume to the end of the next epoch, and compare with a run that was never stopped.
    epochs = step // 8 + 1
    ex.train(digits, out, f"--num_epochs={epochs}", "--checkpoint_every_steps=5", "--resume")
    ex.train(digits, tmp_path / "straight", f"--num_epochs={epochs}")
    resumed, n1 = params_of(ex, out / "checkpoints", tmp_path)
    straight, n2 = params_of(ex, tmp_path / "straight" / "checkpoints", tmp_path)
    assert n1 == n2 == 8 * epochs
    for k in straight:
        np.testing.assert_array_equal(resumed[k], straight[k], err_msg=k)
    assert [r["step"] for r in rows_of(out)] == list(range(1, epochs + 1))


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, digits, patched):
    ex = patched("early_stopping")
    flags = ["--validation_examples=128", "--patience=2"]
    # A learning rate of 50 diverges: the validation accuracy stops improving, so it stops.
    for name, lr, epochs in (("diverging", 50, 10), ("learning", 0.1, 3)):
        out = tmp_path / name
        ex.train(digits, out, f"--learning_rate={lr}", f"--num_epochs={epochs}", *flags)
        rows = rows_of(out)
        best, best_epoch, stop = -1.0, 0, epochs  # the rule, written again
        for r in rows:
            if r["valid_accuracy"] > best:
                best, best_epoch = r["valid_accuracy"], r["step"]
            elif r["step"] - best_epoch >= 2:
                stop = r["step"]
                break
        assert len(rows) == stop, (name, rows)
        assert sorted(os.listdir(out / "best")) == [f"checkpoint_{best_epoch}"]
        if name == "diverging":
            assert stop < epochs
            continue
        check = ex.python(
            "import json, jax; from examples.mnist import input_pipeline, train; "
            "from flaxen.training import checkpoints; "
            f"tr, _, _ = input_pipeline.get_datasets('idx', {str(digits)!r}); "
            "valid = {k: v[-128:] for k, v in tr.items()}; "
            "opt = train.create_optimizer(train.create_model(jax.random.PRNGKey(9)), 0.1, 0.9); "
            f"opt = checkpoints.restore_checkpoint({str(out / 'best')!r}, opt); "
            "print(json.dumps(train.eval_model(opt.target, valid)))")
        assert check[1] == pytest.approx(best, abs=1e-6), (check, best)


def test_finetune_freezes_the_restored_convolutions(tmp_path, digits, patched):
    ex = patched("finetune")
    ex.train(digits, tmp_path / "a")  # the other run: the seed's CNN
    ex.train(digits, tmp_path / "b", f"--finetune_from={tmp_path / 'a' / 'checkpoints'}",
             "--seed=1")
    a, _ = params_of(ex, tmp_path / "a" / "checkpoints", tmp_path)
    b, _ = params_of(ex, tmp_path / "b" / "checkpoints", tmp_path)
    assert sorted(b) == ["Conv_0/bias", "Conv_0/kernel", "Conv_1/bias", "Conv_1/kernel",
                         "head_hidden/bias", "head_hidden/kernel", "head_out/bias",
                         "head_out/kernel"]
    for k in ("Conv_0/kernel", "Conv_0/bias", "Conv_1/kernel", "Conv_1/bias"):
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)  # bit-identical after training
    init = ex.python(
        "import json, jax, numpy as np; from examples.mnist import train; "
        "m = train.create_model(jax.random.PRNGKey(1), True); "
        "print(json.dumps(np.asarray(m.params['head_out']['kernel']).tolist()))")
    assert np.max(np.abs(b["head_out/kernel"] - np.asarray(init))) > 1e-3  # the head trained
    assert rows_of(tmp_path / "b")[0]["test_accuracy"] > 0.2


def test_profiling_writes_a_trace_for_tensorboard(tmp_path, digits, patched):
    ex = patched("profiling")
    out = tmp_path / "out"
    ex.train(digits, out, "--profile_steps=3")
    runs = list((out / "tensorboard" / "plugins" / "profile").iterdir())
    assert len(runs) == 1  # where TensorBoard's Profile tab looks: <logdir>/plugins/profile/
    assert [p.suffix for p in runs[0].glob("*.xplane.pb")] == [".pb"]
    (trace,) = runs[0].glob("*.trace.json.gz")
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    steps = sorted(int(e["args"]["step_num"]) for e in events if e.get("name") == "train")
    assert steps == [2, 3, 4], steps
    assert sum(e.get("name") == "PjitFunction(train_step)" for e in events) >= 3
    assert rows_of(out)[0]["test_accuracy"] > 0.2
