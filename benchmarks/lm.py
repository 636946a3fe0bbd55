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
(skipped with the reason when PyTorch is not installed).

Third table (full mode only): whole 2,000-step runs, each in a fresh process, interleaved
(flaxen, nanoGPT on 1 thread, nanoGPT on PyTorch's default threads, then again in a
rotated order): ``python -m examples.lm1b.train`` with its defaults, exactly as a user
runs it (its allocator settings and loop included), against
``python -m benchmarks.nanogpt_torch``: wall, CPU and system time and peak RSS of each
process, and the held-out loss under nanoGPT's protocol (and flaxen's over every held-out
window). Needs ``$FLAXEN_DATA/tinyshakespeare.txt``. See ``examples/lm1b/README.md``.
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
from benchmarks.harness import Row, interleaved, rows_from_times, spread
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
            + nanogpt_config_rows(quick) + whole_run_rows(quick))


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


def _nano_torch(layers: int, threads: int = 0) -> Any:
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

    default_threads = _torch.get_num_threads()

    def run(n: int) -> None:  # n blocks of STEPS_PER_CALL steps
        _torch.set_num_threads(threads or default_threads)  # process-wide: set each run
        try:
            _steps(n * STEPS_PER_CALL)
        finally:
            _torch.set_num_threads(default_threads)

    def _steps(count: int) -> None:
        for _ in range(count):
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
        runs["nanoGPT (PyTorch re-impl., 1 thread)"] = _nano_torch(layers, 1)
        runs[f"nanoGPT (PyTorch re-impl., {_torch.get_num_threads()} threads)"] = (
            _nano_torch(layers))
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


# -- Whole runs: the example's command against nanoGPT's, as a user runs them ----------------

RUN_STEPS = 2000


# The command runs under this small launcher, not as a direct child: Linux carries the
# peak RSS of the process that execs into the new program's ``ru_maxrss``, so a child forked
# from this (large) benchmark process would report at least this process's peak.
_LAUNCHER = """
import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"code": os.waitstatus_to_exitcode(status), "user_s": usage.ru_utime,
               "sys_s": usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}, f)
"""


def _whole_run(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Runs ``cmd`` to the end; its wall time, CPU time and peak RSS (the command's own
    ``rusage``, taken by a small launcher process) and the JSON summary it prints last
    (``{`` ... ``}``)."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    import time

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryDirectory() as tmp:
        usage_file = os.path.join(tmp, "usage.json")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", _LAUNCHER, usage_file, *cmd], stdout=out,
                       stderr=subprocess.DEVNULL, env=env, check=False)
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read()
        with open(usage_file) as f:
            usage = json.load(f)
    if usage["code"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {usage['code']}: {text[-2000:]}")
    summary: dict[str, Any] = {}
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):  # the last JSON object printed at the start of a line
        if ch == "{" and (i == 0 or text[i - 1] == "\n"):
            try:
                summary = decoder.raw_decode(text, i)[0]
            except ValueError:
                continue
    return {"wall_s": wall, "user_s": usage["user_s"], "sys_s": usage["sys_s"],
            "cpu_s": usage["user_s"] + usage["sys_s"], "rss_mb": usage["rss_mb"], **summary}


def whole_run_rows(quick: bool, repeats: int = 2, steps: int = RUN_STEPS) -> list[Row]:
    """2,000-step runs of ``python -m examples.lm1b.train`` (its defaults: what a user
    gets) and of ``benchmarks/nanogpt_torch.py`` (1 thread and PyTorch's default threads),
    interleaved, each in a fresh process: wall, CPU and system time, peak RSS and the
    held-out loss under nanoGPT's protocol (and flaxen's over the whole held-out text).
    Full mode only; skipped without PyTorch or Tiny Shakespeare ($FLAXEN_DATA)."""
    import os
    import statistics
    import sys
    import tempfile

    bench = f"char-LM, nanoGPT CPU config, whole {steps:,}-step run"
    if quick:
        return [Row(bench, "flaxen example", "wall time", "s", None,
                    note="skipped: whole runs are measured in full mode only")]
    data = os.environ.get("FLAXEN_DATA", "")
    if not os.path.isfile(os.path.join(data, "tinyshakespeare.txt")):
        return [Row(bench, "flaxen example", "wall time", "s", None,
                    note="skipped: FLAXEN_DATA holds no tinyshakespeare.txt")]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    env.pop("XLA_FLAGS", None)  # the example's own XLA options, not the benchmark's
    tmp = tempfile.mkdtemp(prefix="lm_whole_run_")
    cmds = {"flaxen example (python -m examples.lm1b.train)": [
        sys.executable, "-m", "examples.lm1b.train", f"--output_dir={tmp}/fx", "--noprogress",
        f"--num_steps={steps}"]}
    rows: list[Row] = []
    if _torch is None:
        rows.append(Row(bench, "nanoGPT (PyTorch re-impl.)", "wall time", "s", None,
                        note="skipped: PyTorch is not installed (pip install torch)"))
    else:
        for threads in (1, 0):
            name = ("nanoGPT (PyTorch re-impl., 1 thread)" if threads == 1 else
                    f"nanoGPT (PyTorch re-impl., default {_torch.get_num_threads()} threads)")
            cmds[name] = [sys.executable, "-m", "benchmarks.nanogpt_torch",
                          f"--out_dir={tmp}/ng{threads}", "--quiet", f"--threads={threads}",
                          f"--max_iters={steps}", f"--lr_decay_iters={steps}"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cmds}
    names = list(cmds)
    for r in range(repeats):  # interleaved, rotated: load bursts hit every command alike
        for name in names[r % len(names):] + names[:r % len(names)]:
            runs[name].append(_whole_run(cmds[name], env))
    base = next((n for n in names if "1 thread" in n), names[0])
    metrics = (("wall time", "s", "wall_s"), ("CPU time (user + system)", "s", "cpu_s"),
               ("system CPU time", "s", "sys_s"), ("peak RSS", "MiB", "rss_mb"),
               ("held-out loss, nanoGPT protocol (200 random batches)", "nats", "heldout"),
               ("held-out loss, every held-out window", "nats", "eval_loss"))
    for metric, unit, key in metrics:
        for name in names:
            values = [v for v in (_value(run, key) for run in runs[name]) if v is not None]
            if not values:
                continue
            med = statistics.median(values)
            base_values = [v for v in (_value(run, key) for run in runs[base]) if v is not None]
            ratio = (med / statistics.median(base_values)
                     if base_values and key not in ("heldout", "eval_loss") else None)
            rows.append(Row(bench, name, metric, unit, med, spread(values), ratio, len(values),
                            f"load average {os.getloadavg()[0]:.1f} at the end"
                            if metric == "wall time" else "", min(values)))
    return rows


def _value(run: dict[str, Any], key: str) -> float | None:
    if key == "heldout":  # flaxen: eval_loss_random_windows; nanoGPT: val_loss_200
        value = run.get("eval_loss_random_windows", run.get("val_loss_200"))
    else:
        value = run.get(key)
    return None if value is None else float(value)
