"""Benchmark 4: Transformer LM train step (the lm1b example's model, small): tokens/s.

A decoder-only, pre-LayerNorm Transformer with learned positions and tied embeddings
(``examples/lm1b/models.py``), vocabulary 256, width 128, 4 heads, 4 layers (2 in quick
mode), MLP 512, batch 16 x 64 tokens, float32, momentum SGD on next-token cross-entropy.
The plain-JAX version is the same architecture written by hand.

Second table, nanoGPT's character-level CPU configuration (vocabulary 65, width 128, 4
heads, 4 layers, batch 12 x 64, AdamW with weight decay, clipping and nanoGPT's
schedule): the lm1b example's own steps, ``train_step`` (one step per call) and
``train_steps`` (10 per call, ``lax.scan``, donated optimizer: what the example runs),
against the PyTorch re-implementation of nanoGPT in ``benchmarks/nanogpt_torch.py``
(skipped with the reason when PyTorch is not installed). Whole 2,000-step runs of both
are compared in ``examples/lm1b/README.md``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.common import (
    BETA,
    LEARNING_RATE,
    Skip,
    carry_loop,
    load_example,
    momentum_update,
)
from benchmarks.harness import Row, interleaved, rows_from_times
from benchmarks.nanogpt_torch import torch as _torch

VOCAB, WIDTH, HEADS, MLP, LENGTH, BATCH = 256, 128, 4, 512, 64, 16
BASELINE = "plain JAX"


def next_token_loss(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Mean cross-entropy of predicting ``tokens[:, 1:]`` from ``logits[:, :-1]``."""
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


def plain_init(key: jax.Array, layers: int) -> dict[str, Any]:
    keys = iter(jax.random.split(key, 2 + 6 * layers))
    normal = lambda shape: jax.random.normal(next(keys), shape) * 0.02
    ln = lambda: {"scale": jnp.ones((WIDTH,)), "bias": jnp.zeros((WIDTH,))}
    dense = lambda a, b: {"kernel": normal((a, b)), "bias": jnp.zeros((b,))}
    params: dict[str, Any] = {"embed": normal((VOCAB, WIDTH)), "pos": normal((LENGTH, WIDTH)),
                              "ln_final": ln()}
    for i in range(layers):
        params[f"block_{i}"] = {
            "ln_attn": ln(), "ln_mlp": ln(),
            **{n: dense(WIDTH, WIDTH) for n in ("query", "key", "value", "out")},
            "mlp_in": dense(WIDTH, MLP), "mlp_out": dense(MLP, WIDTH)}
    return params


def _ln(p: dict, x: jax.Array) -> jax.Array:
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-6) * p["scale"] + p["bias"]


def _dense(p: dict, x: jax.Array) -> jax.Array:
    return x @ p["kernel"] + p["bias"]


def plain_apply(params: dict, tokens: jax.Array, layers: int) -> jax.Array:
    """Logits ``[batch, length, VOCAB]`` float32."""
    b, n = tokens.shape
    x = params["embed"][tokens] + params["pos"][None, :n]
    mask = jnp.tril(jnp.ones((n, n), bool))
    for i in range(layers):
        p = params[f"block_{i}"]
        h = _ln(p["ln_attn"], x)
        q, k, v = (_dense(p[name], h).reshape(b, n, HEADS, WIDTH // HEADS)
                   for name in ("query", "key", "value"))
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(float(WIDTH // HEADS))
        s = jnp.where(mask, s, jnp.finfo(s.dtype).min)
        h = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s), v).reshape(b, n, WIDTH)
        x = x + _dense(p["out"], h)
        h = _ln(p["ln_mlp"], x)
        x = x + _dense(p["mlp_out"], jax.nn.gelu(_dense(p["mlp_in"], h)))
    return _ln(params["ln_final"], x) @ params["embed"].T


def plain(tokens: jax.Array, layers: int) -> Any:
    params = plain_init(jax.random.PRNGKey(0), layers)
    mom = jax.tree.map(jnp.zeros_like, params)

    @jax.jit
    def step(state, tokens):
        params, mom = state
        grads = jax.grad(lambda p: next_token_loss(plain_apply(p, tokens, layers), tokens))(
            params)
        return momentum_update(params, mom, grads)

    return carry_loop(step, (params, mom), tokens)


def flaxen(tokens: jax.Array, layers: int) -> Any:
    from flaxen import optim

    ex = load_example("lm1b")
    config = ex.LMConfig(vocab_size=VOCAB, emb_dim=WIDTH, num_heads=HEADS, num_layers=layers,
                         mlp_dim=MLP, max_len=LENGTH)
    _, model = ex.TransformerLM.partial(config=config).create(jax.random.PRNGKey(0), tokens)
    optimizer = optim.Momentum(learning_rate=LEARNING_RATE, beta=BETA).create(model)

    @jax.jit
    def step(optimizer, tokens):
        grads = jax.grad(lambda model: next_token_loss(model(tokens), tokens))(
            optimizer.target)
        return optimizer.apply_gradient(grads)

    return carry_loop(step, optimizer, tokens)


def run(quick: bool, peers: bool = True) -> list[Row]:
    """Tokens per second of the train step, plain JAX against flaxen, interleaved."""
    layers = 2 if quick else 4
    tokens = jax.random.randint(jax.random.PRNGKey(1), (BATCH, LENGTH), 0, VOCAB)
    runs = {BASELINE: plain(tokens, layers)}
    rows: list[Row] = []
    bench = f"Transformer LM step ({layers} layers)"
    try:
        runs["flaxen (Optimizer)"] = flaxen(tokens, layers)
    except Skip as e:
        rows.append(Row(bench, "flaxen (Optimizer)", "throughput", "tokens/s", None,
                        note=f"skipped: {e}"))
    cpu: dict[str, list[float]] = {}
    times = interleaved(runs, repeats=5 if quick else 15, target_s=0.3 if quick else 1.0,
                        warmup=2, baseline=BASELINE, cpu=cpu)
    return (rows_from_times(bench, times, BASELINE, unit="ms",
                            throughput_items=BATCH * LENGTH, throughput_unit="tokens/s")
            + rows_from_times(bench, cpu, BASELINE, "CPU time/step", "ms") + rows
            + nanogpt_config_rows(quick))


NANO_VOCAB, NANO_BATCH, NANO_CONTEXT, STEPS_PER_CALL = 65, 12, 64, 10
NANO_BASELINE = "flaxen example, 1 step/call"


def _nano_flaxen(layers: int, steps_per_call: int) -> Any:
    import numpy as np

    from examples.lm1b import input_pipeline, train

    load_example("lm1b")
    args = train.TrainArgs(output_dir="", num_layers=layers)
    config = train.model_config(args, NANO_VOCAB)
    optimizer = train.create_optimizer(config, args, jax.random.PRNGKey(0)).replicate()
    stream = (np.arange(20_000) * 7 % NANO_VOCAB).astype(np.int32)
    schedule = (args.learning_rate, args.warmup_steps, args.num_train_steps,
                args.min_learning_rate)
    rng = jax.random.PRNGKey(1)
    cell: list[Any] = [optimizer, 0]

    def run(n: int) -> None:  # n blocks of STEPS_PER_CALL steps
        opt, step = cell
        m = None
        for _ in range(n * STEPS_PER_CALL // steps_per_call):
            batches = [input_pipeline.train_batch(stream, NANO_BATCH, NANO_CONTEXT, 0, s)
                       for s in range(step, step + steps_per_call)]
            if steps_per_call == 1:
                opt, m = train.train_step(opt, train.parallel.shard_batch(batches[0]), rng,
                                          schedule, args.grad_clip)
            else:
                opt, m = train.train_steps(opt, train.shard_steps(train.stack_steps(batches)),
                                           rng, schedule, args.grad_clip)
            step += steps_per_call
        jax.block_until_ready((opt, m))
        cell[:] = [opt, step]

    return run


def _nano_torch(layers: int) -> Any:
    if _torch is None:
        raise Skip("PyTorch is not installed (pip install torch to compare with nanoGPT)")
    import numpy as np

    from benchmarks import nanogpt_torch as ng

    a = ng.parse([f"--n_layer={layers}"])
    _torch.manual_seed(1337)
    model = ng._build_model_classes()[1](NANO_VOCAB, a.block_size, layers, a.n_head, a.n_embd)
    params = list(model.parameters())
    opt = _torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": a.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=a.learning_rate, betas=(0.9, a.beta2))
    data = (np.arange(20_000) * 7 % NANO_VOCAB).astype(np.uint16)
    it = [0]

    def run(n: int) -> None:  # n blocks of STEPS_PER_CALL steps
        for _ in range(n * STEPS_PER_CALL):
            for g in opt.param_groups:
                g["lr"] = ng.lr_at(it[0], a)
            x, y = ng.get_batch(data, NANO_BATCH, NANO_CONTEXT)
            loss = model(x, y)
            loss.backward()
            _torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            it[0] += 1
            loss.item()  # nanoGPT reads the loss every step (log_interval=1)

    return run


def nanogpt_config_rows(quick: bool) -> list[Row]:
    """Step time of the example's loop against the PyTorch nanoGPT re-implementation."""
    layers = 2 if quick else 4
    bench = f"char-LM, nanoGPT CPU config ({layers} layers)"
    rows: list[Row] = []
    runs: dict[str, Any] = {}
    try:
        runs[NANO_BASELINE] = _nano_flaxen(layers, 1)
        runs[f"flaxen example, {STEPS_PER_CALL} steps/call"] = _nano_flaxen(layers,
                                                                            STEPS_PER_CALL)
    except Skip as e:
        return [Row(bench, "flaxen example", "step time", "ms", None, note=f"skipped: {e}")]
    try:
        runs["nanoGPT (PyTorch re-impl.)"] = _nano_torch(layers)
    except Skip as e:
        rows.append(Row(bench, "nanoGPT (PyTorch re-impl.)", "step time", "ms", None,
                        note=f"skipped: {e}"))
    cpu: dict[str, list[float]] = {}
    # Every run(n) makes n blocks of STEPS_PER_CALL steps (one scanned call, or that many
    # single steps), so that all three do the same number of steps; times are per step.
    blocks = interleaved(runs, repeats=3 if quick else 9, target_s=0.3 if quick else 2.0,
                         warmup=1, baseline=NANO_BASELINE, cpu=cpu)
    times = {k: [t / STEPS_PER_CALL for t in v] for k, v in blocks.items()}
    cpu = {k: [t / STEPS_PER_CALL for t in v] for k, v in cpu.items()}
    return (rows_from_times(bench, times, NANO_BASELINE, unit="ms",
                            throughput_items=NANO_BATCH * NANO_CONTEXT,
                            throughput_unit="tokens/s")
            + rows_from_times(bench, cpu, NANO_BASELINE, "CPU time/step", "ms") + rows)
