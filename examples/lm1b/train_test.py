"""End-to-end tests of the language-model example: a few real steps on small text.

Kept small (2 layers, width 32, context 16) so the whole file runs in well under a minute.
The suite runs with 8 simulated devices, so batches are multiples of 8 and every training
step here is data parallel.
"""

import dataclasses
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from examples.lm1b import generate, input_pipeline, models, train
from examples.lm1b import tokenizer as tok
from flaxen import metrics
from flaxen.errors import FlaxenError

_DATA = os.environ.get("FLAXEN_DATA", "")
SHAKESPEARE = os.path.join(_DATA, "tinyshakespeare.txt") if _DATA else ""


def _small_text(tmp_path, chars: int = 20000) -> str:
    """The first ``chars`` characters of Tiny Shakespeare, or the test is skipped."""
    if not os.path.isfile(SHAKESPEARE):
        pytest.skip("Tiny Shakespeare not found: set FLAXEN_DATA to a folder holding "
                    "tinyshakespeare.txt")
    with open(SHAKESPEARE, encoding="utf-8") as f:
        text = f.read(chars)
    path = tmp_path / "small.txt"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _args(output_dir, text_file, **kw) -> train.TrainArgs:
    base = dict(output_dir=str(output_dir), text_file=text_file, emb_dim=32, num_heads=2,
                num_layers=2, context=16, batch_size=8, num_train_steps=12, learning_rate=1e-2,
                warmup_steps=2, eval_every=1000, eval_batch_size=16, eval_batches=4,
                log_every=3, checkpoint_every=6, sample_length=0, progress=False, plot=False)
    base.update(kw)
    return train.TrainArgs(**base)


def _config(**kw: Any) -> models.LMConfig:
    base: dict[str, Any] = dict(vocab_size=11, emb_dim=16, num_heads=2, num_layers=2,
                                mlp_dim=32, max_len=8)
    base.update(kw)
    return models.LMConfig(**base)


def _forward(params: dict, ids: jax.Array, config: models.LMConfig, **kw) -> jax.Array:
    """The full forward pass, jitted (eager op-by-op dispatch is slow here)."""
    return _jit_forward(params, ids, config, **kw)


@functools.partial(jax.jit, static_argnums=2, static_argnames=("deterministic",))
def _jit_forward(params, ids, config, deterministic=True, _rng=None):
    return models.TransformerLM.call(params, ids, config=config, deterministic=deterministic,
                                     _rng=_rng)


@functools.cache
def _init(config: models.LMConfig, seed: int = 0) -> dict:
    """Parameters of ``config`` (cached: each config compiles its init once per session)."""
    module = models.TransformerLM.partial(config=config)
    return module.init_by_shape(jax.random.PRNGKey(seed), [((1, config.max_len), jnp.int32)])[1]


# -- The model --------------------------------------------------------------------------------


def test_logits_shape_dtype_and_causality():
    config = _config()
    params = _init(config)
    ids = jax.random.randint(jax.random.PRNGKey(1), (3, 8), 0, config.vocab_size)
    logits = _forward(params, ids, config)
    assert logits.shape == (3, 8, config.vocab_size) and logits.dtype == jnp.float32
    # Changing token 5 must not change the logits before position 5.
    other = _forward(params, ids.at[:, 5].set((ids[:, 5] + 1) % 11), config)
    np.testing.assert_allclose(other[:, :5], logits[:, :5], rtol=1e-5, atol=1e-6)
    assert not np.allclose(other[:, 5:], logits[:, 5:])


@pytest.mark.parametrize("position,tied", [("learned", True), ("sinusoidal", False)])
def test_cached_decoding_equals_full_pass(position, tied):
    config = _config(position=position, tied_embeddings=tied)
    params = _init(config, seed=2)
    ids = jax.random.randint(jax.random.PRNGKey(3), (2, 8), 0, config.vocab_size)
    full = _forward(params, ids, config)
    cache = jax.jit(models.init_cache, static_argnums=(1, 2))(params, config, 2)
    step = jax.jit(models.decode_step, static_argnums=1)
    for i in range(8):
        logits, cache = step(params, config, cache, ids[:, i : i + 1], jnp.int32(i))
        np.testing.assert_allclose(logits, full[:, i], rtol=2e-5, atol=2e-5)


def _shapes(config: models.LMConfig) -> dict:
    """The parameter shapes of ``config``, traced without compiling."""
    module = models.TransformerLM.partial(config=config)
    ids = jnp.zeros((1, config.max_len), jnp.int32)
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids)[1])


def test_parameter_layout_tied_and_untied():
    tied = _shapes(_config())
    assert set(tied) == {"embed", "pos_embed", "block_0", "block_1", "ln_final"}
    assert tied["embed"]["embedding"].shape == (11, 16)
    assert set(tied["block_0"]) == {"ln_attn", "attention", "ln_mlp", "mlp"}
    untied = _shapes(_config(tied_embeddings=False, position="sinusoidal"))
    assert "logits" in untied and not jax.tree.leaves(untied.get("pos_embed", {}))
    assert untied["logits"]["kernel"].shape == (16, 11)


def test_sinusoidal_table_matches_formula():
    table = models.sinusoidal_table(6, 8)
    pos, k = 4, 2
    freq = 1.0 / 10000 ** (k / 3)  # half = 4 frequencies, exponents k / (half - 1)
    np.testing.assert_allclose(table[pos, k], math.sin(pos * freq), rtol=1e-6)
    np.testing.assert_allclose(table[pos, 4 + k], math.cos(pos * freq), rtol=1e-6)
    assert table.dtype == np.float32 and table.shape == (6, 8)


def test_bfloat16_compute_is_close_to_float32():
    config = _config()
    params = _init(config)
    ids = jax.random.randint(jax.random.PRNGKey(4), (2, 8), 0, config.vocab_size)
    f32 = _forward(params, ids, config)
    # jax.nn.dot_product_attention (the attention layer's fast path) mixes bf16 and f32
    # internally, which the suite's strict promotion rejects; users run with the default.
    with jax.numpy_dtype_promotion("standard"):
        bf16 = _forward(params, ids, dataclasses.replace(config, dtype=jnp.bfloat16))
    assert bf16.dtype == jnp.float32  # logits come back in float32 for the loss
    np.testing.assert_allclose(bf16, f32, atol=0.1)


def test_dropout_needs_and_uses_a_key():
    config = _config(dropout_rate=0.5, attention_dropout_rate=0.1)
    params = _init(config)
    ids = jnp.zeros((2, 8), jnp.int32)
    det = _forward(params, ids, config)
    a = _forward(params, ids, config, deterministic=False, _rng=jax.random.PRNGKey(0))
    b = _forward(params, ids, config, deterministic=False, _rng=jax.random.PRNGKey(1))
    assert not np.allclose(a, b) and not np.allclose(a, det)


def test_context_longer_than_position_table_is_clear_error():
    config = _config()
    params = _init(config)
    with pytest.raises(models.ContextLengthError, match=r"9 tokens is longer than the "
                       r"position table \(max_len=8\)"):
        _forward(params, jnp.zeros((1, 9), jnp.int32), config)


def test_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    targets = rng.integers(0, 5, size=(2, 3)).astype(np.int32)
    weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    loss_sum, w = train.cross_entropy_sums(jnp.asarray(logits), jnp.asarray(targets),
                                           jnp.asarray(weights))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    nll = -np.log(np.take_along_axis(p, targets[..., None], -1)[..., 0])
    np.testing.assert_allclose(loss_sum, (nll * weights).sum(), rtol=1e-5)
    assert float(w) == 3.0


# -- Sampling ---------------------------------------------------------------------------------


def test_sampling_greedy_top_k_and_past_the_position_table():
    config = _config()
    params = _init(config)
    prompt = np.array([1, 2, 3], np.int32)
    # One compiled sampler for all three calls: temperature and top_k are traced values.
    greedy = generate.sample(params, config, prompt, 12, jax.random.PRNGKey(0), temperature=0,
                             num_samples=2)
    top1 = generate.sample(params, config, prompt, 12, jax.random.PRNGKey(5), temperature=1.0,
                           top_k=1, num_samples=2)
    np.testing.assert_array_equal(greedy, top1)
    np.testing.assert_array_equal(greedy[0], greedy[1])
    assert greedy.shape == (2, 12) and greedy.dtype == np.int32
    # Each greedy token is the argmax of the full pass over the (last max_len) tokens
    # before it: positions < 8 come from the cache, later ones from a sliding window.
    seq = np.concatenate([prompt, greedy[0]])
    head = np.asarray(_forward(params, jnp.asarray(seq[None, :8]), config))[0]
    for t in range(2, 7):
        assert seq[t + 1] == head[t].argmax(), t
    for t in range(7, len(seq) - 1):
        window = np.asarray(_forward(params, jnp.asarray(seq[None, t - 7 : t + 1]), config))
        assert seq[t + 1] == window[0, -1].argmax(), t
    many = generate.sample(params, config, prompt, 12, jax.random.PRNGKey(0), 1.0, 3,
                           num_samples=2)
    assert many.shape == (2, 12) and many.min() >= 0 and many.max() < config.vocab_size
    assert not np.array_equal(many[0], many[1])


def test_filter_logits_keeps_top_k():
    logits = jnp.array([[1.0, 5.0, 3.0, 4.0]])
    out = generate.filter_logits(logits, temperature=2.0, top_k=2)
    np.testing.assert_allclose(out, [[-np.inf, 2.5, -np.inf, 2.0]])
    np.testing.assert_allclose(generate.filter_logits(logits, 1.0, 0), logits)


# -- Training, checkpoints, resume ----------------------------------------------------------------
# Every run below uses the same text, model and schedule, so the training step compiles once.


def test_train_loss_decreases_and_resume_continues_exactly(tmp_path):
    text = _small_text(tmp_path)
    straight = train.train_and_evaluate(_args(tmp_path / "a", text))
    rows = metrics.read_jsonl(tmp_path / "a" / "metrics.jsonl")
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.5, losses
    assert straight["eval_loss"] < math.log(straight["vocab_size"])
    assert math.isclose(straight["eval_perplexity"], math.exp(straight["eval_loss"]),
                        rel_tol=1e-6)
    assert straight["devices"] == jax.device_count() and straight["train_tokens_per_sec"] > 0

    first = train.train_and_evaluate(_args(tmp_path / "b", text, stop_at_step=6))
    assert first["final_step"] == 6
    resumed = train.train_and_evaluate(_args(tmp_path / "b", text, resume=True,
                                             sample_length=8, plot=True))
    assert resumed["start_step"] == 6 and resumed["final_step"] == 12
    pa = generate.load_run(str(tmp_path / "a"))[2]
    config, tokenizer, pb = generate.load_run(str(tmp_path / "b"))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), pa, pb)
    assert math.isclose(straight["train_loss"], resumed["train_loss"], rel_tol=1e-5)
    assert resumed["sample"].startswith("\n") and len(resumed["sample"]) == 9
    for name in ("config.json", tok.FILE_NAME, "metrics.jsonl", "sample.txt"):
        assert os.path.exists(tmp_path / "b" / name)
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "b"))
    assert os.path.getsize(tmp_path / "b" / "curves.png") > 1000
    # generate.py's path: the restored model continues a prompt.
    assert config.vocab_size == tokenizer.vocab_size
    out = generate.sample_text(pb, config, tokenizer, "Fir", 8, jax.random.PRNGKey(0))
    assert out.startswith("Fir") and len(out) == 11


def test_train_steps_equals_that_many_train_step_calls(tmp_path):
    """The scanned, donating loop the example runs is the single step, k times."""
    args = _args(tmp_path, None, batch_size=8, context=8, warmup_steps=1)
    config = _config(vocab_size=11, max_len=8)
    stream = np.arange(200, dtype=np.int32) % 11
    batches = [input_pipeline.train_batch(stream, 8, 8, 0, s) for s in range(3)]
    schedule, rng = (1e-2, 1, 12, 1e-3), jax.random.PRNGKey(3)

    def fresh():
        return train.create_optimizer(config, args, jax.random.PRNGKey(0)).replicate()

    one = fresh()
    for b in batches:
        one, m1 = train.train_step(one, train.parallel.shard_batch(b), rng, schedule, 1.0)
    many, ms = train.train_steps(fresh(), train.shard_steps(train.stack_steps(batches)), rng,
                                 schedule, 1.0)
    assert ms["loss"].shape == (3,) and int(many.state.step) == 3
    np.testing.assert_allclose(ms["loss"][-1], m1["loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 one.target.params, many.target.params)


def test_step_chunks_never_cross_an_event():
    assert train.step_chunks(0, 12, 10, (3, 1000, 6)) == [(0, 3), (3, 3), (6, 3), (9, 3)]
    assert train.step_chunks(5, 27, 10, (10,)) == [(5, 5), (10, 10), (20, 7)]
    assert train.step_chunks(0, 2000, 10, (50, 250, 500))[-1] == (1990, 10)
    assert train.step_chunks(4, 4, 10, (3,)) == []


# -- Bad input ----------------------------------------------------------------------------------


def test_empty_and_binary_text_files_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(input_pipeline.TextDataError, match="is empty"):
        train.train_and_evaluate(_args(tmp_path / "e", str(empty)))
    binary = tmp_path / "weights.bin"
    binary.write_bytes(np.arange(256, dtype=np.uint8).tobytes())
    with pytest.raises(input_pipeline.TextDataError, match="looks binary"):
        train.train_and_evaluate(_args(tmp_path / "b", str(binary)))


def test_context_longer_than_max_len_is_clear_error(tmp_path):
    text = _small_text(tmp_path, 3000)
    with pytest.raises(models.ContextLengthError, match="--context=16 is longer than the "
                       "position table --max_len=8"):
        train.train_and_evaluate(_args(tmp_path / "c", text, max_len=8))


def test_vocabulary_mismatch_on_restore_is_clear_error(tmp_path):
    text = _small_text(tmp_path)
    train.train_and_evaluate(_args(tmp_path / "run", text, stop_at_step=1))
    other = tmp_path / "other.txt"
    with open(text, encoding="utf-8") as f:
        other.write_text(f.read() + "\u00e9\u00e8{}" * 50, encoding="utf-8")
    with pytest.raises(input_pipeline.VocabMismatchError, match="new characters '{}"):
        train.train_and_evaluate(_args(tmp_path / "run", str(other), resume=True))
    with pytest.raises(train.RunConfigError, match="num_layers: 2 -> 3"):
        train.train_and_evaluate(_args(tmp_path / "run", text, resume=True, num_layers=3))
    # A vocabulary file that is not the run's own: generate.py refuses it.
    tok.save(tok.CharTokenizer.from_text("abc"), str(tmp_path / "run" / tok.FILE_NAME))
    with pytest.raises(input_pipeline.VocabMismatchError, match="not the vocabulary the model "
                       "was trained with"):
        generate.load_run(str(tmp_path / "run"))


def test_embed_rejects_float_ids():
    config = _config()
    params = _init(config)
    with pytest.raises(FlaxenError, match="integer"):
        _forward(params, jnp.zeros((1, 4), jnp.float32), config)


def test_resume_after_a_kill_logs_each_step_once(tmp_path):
    """A run killed after logging steps 9 and 12 but saving only step 6: the resumed run
    logs 9 and 12 again, and metrics.jsonl and TensorBoard hold each step once."""
    text = _small_text(tmp_path, 3000)
    run = tmp_path / "run"
    train.train_and_evaluate(_args(run, text))
    os.remove(run / "checkpoints" / "checkpoint_12")  # the kill came before this save
    resumed = train.train_and_evaluate(_args(run, text, resume=True))
    assert resumed["start_step"] == 6
    steps = [r["step"] for r in metrics.read_jsonl(run / "metrics.jsonl") if "train_loss" in r]
    assert steps == [3, 6, 9, 12]
    assert [s for s, _ in metrics.read_scalars(run)["train_loss"]] == [3, 6, 9, 12]
    # Without --resume the run starts afresh and replaces the old one.
    train.train_and_evaluate(_args(run, text, num_train_steps=6, checkpoint_every=3))
    assert sorted(os.listdir(run / "checkpoints")) == ["checkpoint_3", "checkpoint_6"]
    assert [r["step"] for r in metrics.read_jsonl(run / "metrics.jsonl")
            if "train_loss" in r] == [3, 6]


def test_config_file_overrides_reach_the_run(tmp_path):
    """``--config.x.y=value`` (examples/config.py) sets the flat flag the run reads: the
    model in config.json and the steps trained are the overridden ones; giving a setting
    both ways is one Error: line."""
    import json
    import subprocess
    import sys

    text = _small_text(tmp_path, 3000)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": repo}
    script = os.path.join(repo, "examples", "lm1b", "train.py")
    out_dir = tmp_path / "run"
    common = [f"--text_file={text}", f"--output_dir={out_dir}", "--batch_size=8",
              "--eval_batch_size=8", "--eval_batches=1", "--random_eval_batches=0",
              "--sample_length=0", "--noplot", "--noprogress"]
    done = subprocess.run(
        [sys.executable, script, "--config.num_steps=3", "--config.model.num_layers=1",
         "--config.model.emb_dim=16", "--config.model.num_heads=2",
         "--config.data.context=8", *common],
        capture_output=True, text=True, env=env, cwd=repo, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out_dir / "config.json", encoding="utf-8") as f:
        saved = json.load(f)
    assert (saved["model"]["num_layers"], saved["model"]["emb_dim"], saved["context"]) == (
        1, 16, 8)
    assert [r["step"] for r in metrics.read_jsonl(out_dir / "metrics.jsonl")
            if "train_loss" in r] == [3]
    clash = subprocess.run(
        [sys.executable, script, "--config.model.num_layers=1", "--num_layers=2", *common],
        capture_output=True, text=True, env=env, cwd=repo, timeout=300)
    assert clash.returncode == 2 and "Traceback" not in clash.stderr
    assert ("Error: --config.model.num_layers=1 and --num_layers=2 set the same thing"
            in clash.stderr), clash.stderr[-2000:]
