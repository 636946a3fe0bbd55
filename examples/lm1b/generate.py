"""Samples text from a trained language model (temperature and top-k sampling).

    python -m examples.lm1b.generate --output_dir=/tmp/lm_shakespeare \\
        --prompt="ROMEO:" --length=300 --temperature=0.8 --top_k=40

The first ``max_len`` tokens (prompt included) are decoded one at a time with the
attention key/value cache. Beyond the position table, each further token is predicted
from the last ``max_len`` tokens by a full forward pass over that window (a sliding
context, as the model was trained on windows of that length).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from flaxen.errors import CheckpointNotFoundError
from flaxen.training import checkpoints

try:  # as part of the repository's `examples` package
    from examples.lm1b import input_pipeline, models
    from examples.lm1b import tokenizer as tok
except ImportError:  # as a script, or in a forked copy
    import input_pipeline  # type: ignore[no-redef]
    import models  # type: ignore[no-redef]
    import tokenizer as tok  # type: ignore[no-redef]

Params = dict


def filter_logits(logits: jax.Array, temperature: jax.typing.ArrayLike,
                  top_k: jax.typing.ArrayLike) -> jax.Array:
    """Logits divided by ``temperature``, all but the ``top_k`` largest set to -inf.

    Args:
      logits: float32 ``[batch, vocab]``.
      temperature: > 0 (0 is handled by the caller as greedy decoding).
      top_k: keep this many candidates; 0 keeps all. May be traced: the threshold is the
        ``top_k``-th largest logit of a sort, so one compiled sampler serves every k.
    """
    vocab = logits.shape[-1]
    logits = logits / jnp.asarray(temperature, jnp.float32)
    k = jnp.clip(jnp.asarray(top_k, jnp.int32), 0, vocab)
    index = jnp.where(k > 0, vocab - k, 0)
    kth = jnp.take(jnp.sort(logits, axis=-1), index, axis=-1)[..., None]
    return jnp.where(logits < kth, -jnp.inf, logits)


def _pick(logits: jax.Array, rng: jax.Array, temperature: jax.Array,
          top_k: jax.Array) -> jax.Array:
    """A sampled token per row, or the argmax where ``temperature == 0``."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    safe_t = jnp.where(temperature > 0, temperature, jnp.ones((), jnp.float32))
    sampled = jax.random.categorical(rng, filter_logits(logits, safe_t, top_k), axis=-1)
    return jnp.where(temperature > 0, sampled.astype(jnp.int32), greedy)


@functools.partial(jax.jit, static_argnames=("config", "total"))
def _sample_ids(params: Params, config: models.LMConfig, prompt: jax.Array, total: int,
                rng: jax.Array, temperature: jax.Array, top_k: jax.Array) -> jax.Array:
    """``[batch, total]`` ids: the prompt (``[batch, <= max_len]``), then samples."""
    batch, prompt_len = prompt.shape
    cached = min(total, config.max_len)
    tokens = jnp.zeros((batch, total), jnp.int32).at[:, : prompt.shape[1]].set(prompt)

    def cached_step(i: jax.Array, carry: tuple) -> tuple:
        tokens, cache = carry
        token = jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1)
        logits, cache = models.decode_step(params, config, cache, token, i)
        nxt = _pick(logits, jax.random.fold_in(rng, i), temperature, top_k)
        given = jax.lax.dynamic_slice_in_dim(tokens, i + 1, 1, axis=1)[:, 0]
        new = jnp.where(i + 1 < prompt_len, given, nxt)  # inside the prompt: keep it
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, new[:, None], i + 1, axis=1)
        return tokens, cache

    cache = models.init_cache(params, config, batch)
    tokens, _ = jax.lax.fori_loop(0, cached - 1, cached_step, (tokens, cache))

    def window_step(i: jax.Array, tokens: jax.Array) -> jax.Array:
        window = jax.lax.dynamic_slice_in_dim(tokens, i - config.max_len, config.max_len, axis=1)
        logits = models.TransformerLM.call(params, window, config=config)[:, -1]
        nxt = _pick(logits, jax.random.fold_in(rng, i), temperature, top_k)
        return jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], i, axis=1)

    if total <= config.max_len:
        return tokens
    return jax.lax.fori_loop(cached, total, window_step, tokens)


def sample(params: Params, config: models.LMConfig, prompt_ids: np.ndarray, num_tokens: int,
           rng: jax.Array, temperature: float = 0.8, top_k: int = 40,
           num_samples: int = 1) -> np.ndarray:
    """Continues ``prompt_ids`` by ``num_tokens`` sampled tokens.

    Args:
      params: the model's parameters.
      config: its ``LMConfig``.
      prompt_ids: int ``[prompt_len]``, at least one token; if longer than ``max_len``
        only its last ``max_len`` tokens are used as context.
      num_tokens: how many tokens to generate.
      rng: PRNG key.
      temperature: 0 for greedy decoding, else the softmax temperature.
      top_k: sample among the ``top_k`` most likely tokens (0: all).
      num_samples: independent continuations.

    Returns:
      int32 ``[num_samples, num_tokens]``: the generated tokens only.
    """
    prompt = np.asarray(prompt_ids, np.int32).reshape(-1)[-config.max_len:]
    if prompt.size == 0:
        raise tok.TokenizerError("The prompt must have at least one token (e.g. '\\n').")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0; got {temperature}.")
    total = prompt.size + num_tokens
    batch = np.broadcast_to(prompt, (num_samples, prompt.size))
    ids = _sample_ids(params, config, jnp.asarray(batch), total, rng,
                      jnp.float32(temperature), jnp.int32(top_k))
    return np.asarray(ids[:, prompt.size:])


def sample_text(params: Params, config: models.LMConfig, tokenizer: tok.Tokenizer,
                prompt: str, num_tokens: int, rng: jax.Array, temperature: float = 0.8,
                top_k: int = 40) -> str:
    """``prompt`` followed by ``num_tokens`` sampled tokens, as text."""
    ids = tokenizer.encode(prompt)
    out = sample(params, config, ids, num_tokens, rng, temperature, top_k)
    return prompt + tokenizer.decode(out[0])


def load_run(model_dir: str) -> tuple[models.LMConfig, tok.Tokenizer, Params]:
    """The config, tokenizer and latest parameters of a training run in ``model_dir``.

    Raises:
      TokenizerError: ``vocab.flaxen.json`` is missing or damaged.
      VocabMismatchError: the tokenizer is not the one the model was trained with.
      CheckpointNotFoundError / CheckpointMismatchError: no usable checkpoint.
    """
    cfg_path = os.path.join(model_dir, "config.json")
    if not os.path.exists(cfg_path):
        raise input_pipeline.TextDataError(
            f"No config.json in --output_dir={model_dir}: not a training run of train.py.")
    with open(cfg_path, encoding="utf-8") as f:
        run = json.load(f)
    tokenizer = tok.load_from_run(model_dir)
    fingerprint = run.get("tokenizer_fingerprint")
    vocab_size = run["model"]["vocab_size"]
    if fingerprint != tokenizer.fingerprint() or vocab_size != tokenizer.vocab_size:
        raise input_pipeline.VocabMismatchError(
            f"The {tok.FILE_NAME} in {model_dir} ({tokenizer.kind}, {tokenizer.vocab_size} "
            f"tokens, {tokenizer.fingerprint()}) is not the vocabulary the model was trained "
            f"with ({vocab_size} tokens, {fingerprint}). Restore the run's own {tok.FILE_NAME}.")
    config = models.LMConfig.from_json(run["model"])
    template = models.TransformerLM.partial(config=config).init_by_shape(
        jax.random.PRNGKey(0), [((1, config.max_len), jnp.int32)])[1]
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    if checkpoints.latest_checkpoint(ckpt_dir) is None:
        raise CheckpointNotFoundError(
            f"No checkpoint in {ckpt_dir}; train first with train.py --output_dir={model_dir}.")
    raw = checkpoints.restore_checkpoint(ckpt_dir, None)
    params, _ = checkpoints.restore_state(template, raw["target"]["params"])
    return config, tokenizer, params


def _define_flags() -> None:
    flags.DEFINE_string("output_dir", None, "The --output_dir of a training run of train.py.")
    flags.DEFINE_string("model_dir", None, "Deprecated: the old name of --output_dir.")
    flags.DEFINE_string("prompt", "\n", "Text to continue.")
    flags.DEFINE_integer("length", 500, "Tokens to generate.")
    flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 for greedy decoding.")
    flags.DEFINE_integer("top_k", 40, "Sample among the k most likely tokens (0: all).")
    flags.DEFINE_integer("num_samples", 1, "Independent samples.")
    flags.DEFINE_integer("seed", 0, "PRNG seed.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    run_dir = f.output_dir or f.model_dir
    if not run_dir:
        raise app.UsageError("--output_dir (the folder of a train.py run) is required.")
    config, tokenizer, params = load_run(run_dir)
    ids = tokenizer.encode(f.prompt)
    out = sample(params, config, ids, f.length, jax.random.PRNGKey(f.seed), f.temperature,
                 f.top_k, f.num_samples)
    for i, row in enumerate(out):
        print(f"--- sample {i} ---\n{f.prompt}{tokenizer.decode(row)}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
