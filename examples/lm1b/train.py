"""Trains a decoder-only Transformer language model on LM1b or any plain-text file.

    # Tiny Shakespeare, character level (the README's run; from the repository root), with
    # FLAXEN_DATA pointing at a folder holding tinyshakespeare.txt:
    python -m examples.lm1b.train --output_dir=/tmp/lm_shakespeare
    # LM1b release files, SentencePiece vocabulary trained on the training text:
    python -m examples.lm1b.train --lm1b_dir=/data/lm1b --output_dir=/tmp/lm1b \\
        --vocab_size=32000 --emb_dim=512 --num_heads=8 --num_layers=6 --context=256

Several processes (one line per host; see docs/multihost.md): add
``--coordinator_address=HOST0:1234 --num_processes=N --process_id=I``.

Everything goes to --output_dir: ``checkpoints/``, ``vocab.flaxen.json``, ``config.json``,
TensorBoard event files, ``metrics.jsonl`` (plain metrics, one JSON object per line),
``curves.png`` (training and held-out loss) and ``sample.txt``. ``--resume`` continues
from the last checkpoint; the batches of step ``s`` depend only on ``(seed, s)``, so a
resumed run sees the data an uninterrupted one would.

Data parallel: the optimizer is replicated over all devices of all processes
(``optimizer.replicate()``) and each global batch is split over them
(``parallel.shard_batch``); one ``jax.jit`` step. Each process draws the same window offsets
for a step and reads only its own rows; process 0 writes every file.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import math
import os
import sys
import time
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from tqdm import tqdm

from flaxen import distributed, metrics, nn, optim, parallel
from flaxen.errors import FlaxenError
from flaxen.training import checkpoints

try:  # as part of the repository's `examples` package (tests, `python -m examples.lm1b.train`)
    from examples import config as config_lib
    from examples.lm1b import allocator, generate, input_pipeline, large_model, models
    from examples.lm1b import tokenizer as tok
except ImportError:  # as a script, `python examples/lm1b/train.py`, or in a forked copy
    sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import allocator  # type: ignore[no-redef]
    import config as config_lib  # type: ignore[no-redef]  # examples/config.py
    import generate  # type: ignore[no-redef]
    import input_pipeline  # type: ignore[no-redef]
    import large_model  # type: ignore[no-redef]
    import models  # type: ignore[no-redef]
    import tokenizer as tok  # type: ignore[no-redef]


class RunConfigError(FlaxenError):
    """--resume with flags that do not match the run in --output_dir."""


@dataclasses.dataclass
class TrainArgs:
    """Everything a training run needs (the flags, as a plain object for tests)."""

    output_dir: str
    data_dir: str = ""  # "": $FLAXEN_DATA
    text_file: str | None = None
    lm1b_dir: str | None = None
    tokenizer: str = "char"
    vocab_size: int = 8000
    eval_fraction: float = 0.1
    max_train_sentences: int | None = None
    # Model.
    emb_dim: int = 128
    num_heads: int = 4
    num_layers: int = 4
    mlp_dim: int = 0  # 0: 4 * emb_dim
    context: int = 64
    max_len: int = 0  # 0: context
    position: str = "learned"
    tied_embeddings: bool = True
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: str = "float32"
    # Larger models (large_model.py): mesh, sharding rules, scanned layers, remat.
    mesh_model: int = 1
    sharding: str = "replicated"
    scan_layers: bool = False
    remat: bool = False
    # Optimisation.
    batch_size: int = 12
    num_train_steps: int = 2000
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    seed: int = 0
    steps_per_call: int = 10
    # Bookkeeping.
    eval_every: int = 250
    eval_batch_size: int = 64
    eval_batches: int = 0  # 0: the whole held-out text
    random_eval_batches: int = 200  # nanoGPT's estimate at the end (0: off)
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: bool = False
    stop_at_step: int = 0  # 0: num_train_steps; else stop there (continue with resume)
    progress: bool = True
    plot: bool = True
    # Sampling at the end.
    sample_length: int = 500
    prompt: str = "\n"
    temperature: float = 0.8
    top_k: int = 40


# -- Model, loss and schedule -------------------------------------------------------------


def model_config(args: TrainArgs, vocab_size: int) -> models.LMConfig:
    """The ``LMConfig`` the flags describe, for a vocabulary of ``vocab_size``."""
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if args.dtype not in dtypes:
        raise RunConfigError(f"--dtype must be float32 or bfloat16; got {args.dtype!r}.")
    return models.LMConfig(
        vocab_size=vocab_size, emb_dim=args.emb_dim, num_heads=args.num_heads,
        num_layers=args.num_layers, mlp_dim=args.mlp_dim or 4 * args.emb_dim,
        max_len=args.max_len or args.context, position=args.position,
        tied_embeddings=args.tied_embeddings, dropout_rate=args.dropout_rate,
        attention_dropout_rate=args.attention_dropout_rate, dtype=dtypes[args.dtype],
        **large_model.config_options(args))


def cross_entropy_sums(logits: jax.Array, targets: jax.Array,
                       weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sum of weighted -log p(target), sum of weights)``, both float32 scalars.

    Args:
      logits: float32 ``[batch, length, vocab]``.
      targets: int32 ``[batch, length]``.
      weights: float32 ``[batch, length]``: 1 for real tokens, 0 for padding.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * weights), jnp.sum(weights)


def learning_rate_schedule(peak: float, warmup_steps: int, decay_steps: int,
                           end: float) -> optim.schedules.Schedule:
    """Linear warm-up to ``peak``, then cosine decay to ``end`` at ``decay_steps``."""
    return optim.schedules.warmup_cosine(peak_value=peak, warmup_steps=warmup_steps,
                                         decay_steps=max(decay_steps, warmup_steps + 1),
                                         end_value=end)


def _is_matrix(path: str, value: Any) -> bool:
    return np.ndim(value) >= 2


def _is_vector(path: str, value: Any) -> bool:
    return np.ndim(value) < 2


def create_optimizer(config: models.LMConfig, args: TrainArgs, rng: jax.Array) -> optim.Optimizer:
    """A fresh AdamW optimizer on new parameters.

    Decoupled weight decay applies to the matrices (kernels, embeddings) only, not to
    biases and LayerNorm scales: one ``optim.Adam`` per group in an ``optim.MultiOptimizer``.
    """
    module = models.TransformerLM.partial(config=config)
    _, params = module.init_by_shape(rng, [((1, config.max_len), jnp.int32)])
    adam = functools.partial(optim.Adam, learning_rate=args.learning_rate, beta1=args.beta1,
                             beta2=args.beta2)
    opt_def = optim.MultiOptimizer(
        (optim.ModelParamTraversal(_is_matrix), adam(weight_decay=args.weight_decay)),
        (optim.ModelParamTraversal(_is_vector), adam(weight_decay=0.0)))
    return opt_def.create(nn.Model(module, params))


def global_norm(tree: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _update(optimizer: optim.Optimizer, batch: dict[str, jax.Array], dropout_rng: jax.Array,
            schedule: tuple[float, int, int, float],
            grad_clip: float) -> tuple[optim.Optimizer, dict]:
    """One update on ``batch`` (traced inside ``train_step`` and ``train_steps``)."""
    step = optimizer.state.step
    lr = learning_rate_schedule(*schedule)(step)

    def loss_fn(model: nn.Model) -> tuple[jax.Array, jax.Array]:
        logits = model(batch["inputs"], deterministic=False,
                       _rng=jax.random.fold_in(dropout_rng, step))
        loss_sum, weight_sum = cross_entropy_sums(logits, batch["targets"], batch["weights"])
        return loss_sum / weight_sum, weight_sum

    loss, _, grads = optimizer.compute_gradient(loss_fn)
    norm = global_norm(grads)
    if grad_clip > 0:
        scale = jnp.minimum(1.0, grad_clip / (norm + 1e-6))
        grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
    optimizer = optimizer.apply_gradient(grads, learning_rate=lr)
    return optimizer, {"loss": loss, "grad_norm": norm, "learning_rate": lr}


@functools.partial(jax.jit, static_argnames=("schedule", "grad_clip"))
def train_step(optimizer: optim.Optimizer, batch: dict[str, jax.Array], dropout_rng: jax.Array,
               schedule: tuple[float, int, int, float],
               grad_clip: float) -> tuple[optim.Optimizer, dict]:
    """One update on ``batch``; gradients clipped to global norm ``grad_clip`` (0: off).

    Args:
      optimizer: the (replicated) optimizer.
      batch: ``inputs``, ``targets`` (int32) and ``weights`` (float32), ``[batch, length]``,
        sharded over the devices.
      dropout_rng: the run's dropout key; each step folds in its step number.
      schedule: ``(peak, warmup_steps, decay_steps, end)`` of the learning rate (static).
      grad_clip: the largest global gradient norm (static).

    Returns:
      The new optimizer and ``{'loss', 'grad_norm', 'learning_rate'}`` (scalars).
    """
    return _update(optimizer, batch, dropout_rng, schedule, grad_clip)


@functools.partial(jax.jit, static_argnames=("schedule", "grad_clip"), donate_argnums=0)
def train_steps(optimizer: optim.Optimizer, batches: dict[str, jax.Array],
                dropout_rng: jax.Array, schedule: tuple[float, int, int, float],
                grad_clip: float) -> tuple[optim.Optimizer, dict]:
    """``k`` updates in one call: ``train_step`` on each ``batches[i]``, under ``lax.scan``.

    This is the loop the example runs. Three things make it fast on CPU, where a step of
    this small model costs about as much as the work around it:

    - one dispatch, one host round trip and one XLA temporary buffer per ``k`` steps
      instead of per step (XLA:CPU allocates, and the kernel zero-fills, that buffer on
      every call: at ``k=1`` it was most of the run's system time);
    - the optimizer's buffers are donated (``donate_argnums=0``): the new parameters and
      moments are written in place of the old ones, no fresh 9 MB of outputs per call.
      The ``optimizer`` passed in is invalid afterwards; use the one returned;
    - metrics come back as ``[k]`` arrays that the loop reads one call later, so the
      host never waits for the device in between.

    Args:
      optimizer: as in ``train_step`` (donated).
      batches: ``inputs``, ``targets``, ``weights`` of shape ``[k, batch, length]``, the
        batch axis sharded over the devices (``shard_steps``).
      dropout_rng, schedule, grad_clip: as in ``train_step``.

    Returns:
      The optimizer after ``k`` steps and ``{'loss', 'grad_norm', 'learning_rate'}``,
      each float32 ``[k]``. Bit for bit the same as ``k`` calls of ``train_step``.
    """
    def body(opt: optim.Optimizer, batch: dict[str, jax.Array]) -> tuple[optim.Optimizer, dict]:
        return _update(opt, batch, dropout_rng, schedule, grad_clip)

    return jax.lax.scan(body, optimizer, batches)


def shard_steps(batches: dict[str, np.ndarray],
                mesh: jax.sharding.Mesh | None = None) -> dict[str, jax.Array]:
    """Host arrays ``[k, batch, ...]`` (this process's rows) to device arrays whose batch
    axis (axis 1) is split over the mesh's batch axis (default: every device), as
    ``parallel.shard_batch`` does for axis 0."""
    mesh = mesh or parallel.default_mesh()
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
        None, parallel.BATCH_AXIS))
    if jax.process_count() == 1:
        return jax.device_put(batches, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batches.items()}


def stack_steps(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``k`` batches of ``[batch, ...]`` to one of ``[k, batch, ...]``."""
    return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


@jax.jit
def eval_step(model: nn.Model, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """``(loss sum, weight sum)`` of ``batch`` (no dropout)."""
    logits = model(batch["inputs"], deterministic=True)
    return cross_entropy_sums(logits, batch["targets"], batch["weights"])


@jax.jit
def eval_sums(model: nn.Model, batches: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """``eval_step`` over ``[n, batch, length]`` batches in one call: the summed
    ``(loss sum, weight sum)`` and, per batch, its mean loss (``[n]``)."""
    def body(total: Any, batch: dict[str, jax.Array]) -> tuple[Any, jax.Array]:
        ls, ws = eval_step(model, batch)
        return (total[0] + ls, total[1] + ws), ls / jnp.maximum(ws, 1.0)

    zero = jnp.zeros((), jnp.float32)
    init: Any = (zero, zero)
    return jax.lax.scan(body, init, batches)


def held_out_batches(stream: np.ndarray, args: TrainArgs) -> dict[str, jax.Array]:
    """The whole held-out stream (or ``--eval_batches`` of it) as one device array of
    ``[n, eval_batch_size, context]`` batches, made once per run."""
    rows = distributed.local_rows(args.eval_batch_size, parallel.default_mesh())
    return shard_steps(stack_steps(list(input_pipeline.eval_batches(
        stream, args.eval_batch_size, args.context, args.eval_batches or None, rows))),
        large_model.mesh(args))


def evaluate(model: nn.Model, stream: np.ndarray | dict[str, jax.Array],
             args: TrainArgs) -> dict[str, float]:
    """Mean loss (nats per token) and perplexity over the held-out stream (every window
    once; ``stream`` may be ``held_out_batches(stream, args)``, made beforehand)."""
    batches = held_out_batches(stream, args) if isinstance(stream, np.ndarray) else stream
    (loss_sum, weight_sum), _ = eval_sums(model, batches)
    loss = float(loss_sum) / max(float(weight_sum), 1.0)
    return {"eval_loss": loss, "eval_perplexity": float(min(math.exp(loss), 1e4))}


def evaluate_random_windows(model: nn.Model, stream: np.ndarray, args: TrainArgs) -> float:
    """nanoGPT's held-out estimate: the mean over ``--random_eval_batches`` batches of
    ``--batch_size`` windows at random offsets of each batch's mean loss (nanoGPT's
    ``estimate_loss`` on its validation split). Noisier than ``evaluate``, which reads
    every window once; reported beside it so the two projects can be compared."""
    rows = distributed.local_rows(args.batch_size, parallel.default_mesh())
    batches = [input_pipeline.train_batch(stream, args.batch_size, args.context,
                                          args.seed + 1, i, rows)
               for i in range(args.random_eval_batches)]
    _, means = eval_sums(model, shard_steps(stack_steps(batches), large_model.mesh(args)))
    return float(jnp.mean(means))


# -- Run directory --------------------------------------------------------------------------


DEFAULT_TEXT = "tinyshakespeare.txt"


def text_file_path(args: TrainArgs) -> str | None:
    """The text to train on: ``--text_file`` (a relative name is looked up in the current
    folder, then in ``--data_dir``), or ``DATA_DIR/tinyshakespeare.txt`` when neither
    ``--text_file`` nor ``--lm1b_dir`` is given; ``--data_dir`` defaults to ``$FLAXEN_DATA``."""
    data_dir = args.data_dir or os.environ.get("FLAXEN_DATA", "")
    if args.text_file is None:
        if args.lm1b_dir is not None:
            return None
        if data_dir and os.path.isfile(os.path.join(data_dir, DEFAULT_TEXT)):
            return os.path.abspath(os.path.join(data_dir, DEFAULT_TEXT))
        where = (f"--data_dir={os.path.abspath(data_dir)} holds no {DEFAULT_TEXT}" if data_dir
                 else "neither --data_dir nor FLAXEN_DATA is set")
        raise input_pipeline.TextDataError(
            f"No training text: give --text_file=FILE (any UTF-8 text) or --lm1b_dir=DIR, or "
            f"point --data_dir (or FLAXEN_DATA) at a folder holding {DEFAULT_TEXT} ({where}).")
    if not os.path.isabs(args.text_file) and not os.path.exists(args.text_file) and data_dir:
        candidate = os.path.join(data_dir, args.text_file)
        if os.path.exists(candidate):
            return os.path.abspath(candidate)
    return os.path.abspath(args.text_file)


def load_dataset(args: TrainArgs, saved: tok.Tokenizer | None) -> input_pipeline.Dataset:
    where = f"--output_dir={args.output_dir}"
    if args.text_file is not None and args.lm1b_dir is not None:
        raise input_pipeline.TextDataError("Give only one of --text_file and --lm1b_dir.")
    text_file = text_file_path(args)
    if text_file is not None:
        return input_pipeline.load_text_dataset(text_file, args.tokenizer, args.vocab_size,
                                                args.eval_fraction, saved, where)
    return input_pipeline.load_lm1b_dataset(args.lm1b_dir or "", args.vocab_size,
                                            args.max_train_sentences, saved=saved, where=where)


def check_run_config(path: str, config: models.LMConfig, tokenizer: tok.Tokenizer) -> None:
    """Raises RunConfigError if the run in ``path`` used another model configuration."""
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if saved.get("tokenizer_fingerprint") != tokenizer.fingerprint():
        raise input_pipeline.VocabMismatchError(
            f"{path} was trained with vocabulary {saved.get('tokenizer_fingerprint')} "
            f"({saved.get('model', {}).get('vocab_size')} tokens), but the tokenizer now has "
            f"{tokenizer.fingerprint()} ({tokenizer.vocab_size} tokens). Resume with the "
            f"{tok.FILE_NAME} of that run and the same data, or use a new --output_dir.")
    now = config.to_json()
    diff = {k: (saved["model"].get(k), v) for k, v in now.items() if saved["model"].get(k) != v}
    if diff:
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in
                           ((k, *ab) for k, ab in sorted(diff.items())))
        raise RunConfigError(f"--resume: the flags describe another model than the one in "
                             f"{path} ({listed}). Use the same flags, or a new --output_dir.")


def write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def plot_curves(jsonl_path: str, out_path: str, title: str = "Language model") -> None:
    """Training and held-out loss against step, from ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = metrics.read_jsonl(jsonl_path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("train_loss", "training"), ("eval_loss", "held-out")):
        pts = sorted((r["step"], r[key]) for r in rows if key in r)
        if pts:
            ax.plot(*zip(*pts), label=label, marker="o" if key == "eval_loss" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


# -- The loop ---------------------------------------------------------------------------------


def train_and_evaluate(args: TrainArgs) -> dict[str, Any]:
    """Trains, evaluates, checkpoints and samples. Returns the final metrics and timings.

    Raises:
      TextDataError: the text is missing, empty, binary or too short for the context.
      VocabMismatchError: ``resume`` with data or flags that give another vocabulary.
      RunConfigError: checkpoints exist without ``resume``, or ``resume`` with other flags.
      ContextLengthError: ``context`` is longer than the position table ``max_len``.
    """
    os.makedirs(args.output_dir, exist_ok=True)
    ckpt_dir = os.path.join(args.output_dir, "checkpoints")
    tok_path = os.path.join(args.output_dir, tok.FILE_NAME)
    cfg_path = os.path.join(args.output_dir, "config.json")
    main_process = jax.process_index() == 0
    if not args.resume:
        start_afresh(args.output_dir)
    saved_tok = None
    if args.resume and os.path.exists(tok.run_file(args.output_dir)):
        saved_tok = tok.load_from_run(args.output_dir)

    if jax.process_count() > 1 and saved_tok is None:
        # One vocabulary for all: process 0 builds it, the others read it.
        from jax.experimental import multihost_utils

        dataset = load_dataset(args, None) if main_process else None
        if dataset is not None:
            tok.save(dataset.tokenizer, tok_path)
        multihost_utils.sync_global_devices("lm1b: vocab.flaxen.json written")
        if dataset is None:
            dataset = load_dataset(args, tok.load(tok_path))
    else:
        dataset = load_dataset(args, saved_tok)
    tokenizer = dataset.tokenizer
    config = model_config(args, tokenizer.vocab_size)
    if args.context > config.max_len:
        raise models.ContextLengthError(
            f"--context={args.context} is longer than the position table --max_len="
            f"{config.max_len}. Use --context <= --max_len.")
    input_pipeline.check_lengths(dataset, args.context)
    if args.resume and os.path.exists(cfg_path):
        check_run_config(cfg_path, config, tokenizer)
    if main_process:
        tok.save(tokenizer, tok_path)
        write_json(cfg_path, {"model": config.to_json(), "context": args.context,
                              "tokenizer_fingerprint": tokenizer.fingerprint(),
                              "data": dataset.source})

    init_rng, dropout_rng, sample_rng = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    optimizer = create_optimizer(config, args, init_rng)
    if args.resume:
        optimizer = checkpoints.restore_checkpoint(ckpt_dir, optimizer)
    allocator.release_free_memory()  # the init compilation's temporaries (peak memory)
    start = int(optimizer.state.step)
    # A run killed after its last checkpoint logged steps that this run logs again.
    metrics.truncate_jsonl(os.path.join(args.output_dir, "metrics.jsonl"), start)
    metrics.truncate_events(args.output_dir, start)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(optimizer.target.params))
    logging.info("%d parameters; %d train / %d held-out tokens; vocabulary %d; from step %d",
                 n_params, len(dataset.train), len(dataset.eval), tokenizer.vocab_size, start)
    result: dict[str, Any] = {"start_step": start, "num_params": n_params,
                              "vocab_size": tokenizer.vocab_size,
                              "devices": jax.device_count()}
    with metrics.SummaryWriter(args.output_dir) as tb, \
            metrics.JsonlWriter(os.path.join(args.output_dir, "metrics.jsonl")) as plain:
        def log(step: int, row: dict[str, float]) -> None:
            for k, v in row.items():
                tb.scalar(k, v, step)
            plain.write(step, row)
            result.update(row)

        optimizer = _train_loop(large_model.place(optimizer, args, large_model.mesh(args)),
                                dataset, args, dropout_rng, ckpt_dir,
                                start, log, result)
        if result["final_step"] == start:  # nothing to train: still report the held-out loss
            result.update(evaluate(optimizer.target, dataset.eval, args))
        if args.random_eval_batches > 0:
            row = {"eval_loss_random_windows": evaluate_random_windows(
                optimizer.target, dataset.eval, args)}
            log(result["final_step"], row)
            allocator.release_free_memory()
        if args.sample_length > 0 and main_process:
            params = optimizer.unreplicate().target.params
            text = generate.sample_text(params, config, tokenizer, args.prompt,
                                        args.sample_length, sample_rng, args.temperature,
                                        args.top_k)
            result["sample"] = text
            with open(os.path.join(args.output_dir, "sample.txt"), "w", encoding="utf-8") as f:
                f.write(text)
            tb.text("sample", text, result["final_step"])
            allocator.release_free_memory()  # before matplotlib, the last peak
    if args.plot and main_process:
        plot_curves(os.path.join(args.output_dir, "metrics.jsonl"),
                    os.path.join(args.output_dir, "curves.png"),
                    f"Transformer LM ({n_params:,} parameters) on "
                    f"{os.path.basename(dataset.source)}: loss per step")
    return result


def start_afresh(output_dir: str) -> None:
    """Removes the files of an earlier run in ``output_dir`` (process 0): without --resume a
    run starts over, and its checkpoints and curves must not mix with the old ones."""
    if jax.process_index() != 0:
        return
    for pattern in ("checkpoints/checkpoint_*", "events.out.tfevents.*", "metrics.jsonl",
                    "curves.png", "sample.txt"):
        for path in glob.glob(os.path.join(output_dir, pattern)):
            logging.info("Starting afresh: removing %s (pass --resume to continue a run).", path)
            os.remove(path)


def step_chunks(start: int, end: int, steps_per_call: int,
                boundaries: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(first step, number of steps)`` of each ``train_steps`` call from ``start`` to
    ``end``: at most ``steps_per_call`` steps, never across a multiple of one of
    ``boundaries`` (logging, evaluation and checkpoint intervals), so every event
    happens between two calls."""
    chunks = []
    step = start
    while step < end:
        stop = min(end, step + steps_per_call,
                   *(step - step % b + b for b in boundaries if b > 0))
        chunks.append((step, stop - step))
        step = stop
    return chunks


def _train_loop(optimizer: optim.Optimizer, dataset: input_pipeline.Dataset, args: TrainArgs,
                dropout_rng: jax.Array, ckpt_dir: str, start: int, log: Any,
                result: dict[str, Any]) -> optim.Optimizer:
    """Steps ``start`` to ``num_train_steps`` (or ``stop_at_step``), with evals and saves.

    Runs ``train_steps`` on ``--steps_per_call`` steps at a time. JAX dispatches a call
    and returns at once, so while the device computes one call, the host builds the next
    call's batches and writes the previous call's metrics (which are ready by then):
    the device never waits for the host. Only a checkpoint waits for the device.
    ``train_steps`` is compiled ahead of its first call (``lower().compile()``), and the
    heap memory the compiler freed is handed back before the call runs, so the
    compiler's temporaries and the step's own buffers never add up in the peak memory.

    Adds ``final_step``, ``wall_time_sec`` and ``train_tokens_per_sec`` (from the end of
    the first, compiling call to the end; evaluations and checkpoints included) to
    ``result``.
    """
    end = min(args.stop_at_step or args.num_train_steps, args.num_train_steps)
    schedule = (args.learning_rate, args.warmup_steps, args.num_train_steps,
                args.min_learning_rate)
    rows = distributed.local_rows(args.batch_size, parallel.default_mesh())
    held_out = held_out_batches(dataset.eval, args)
    chunks = step_chunks(start, end, args.steps_per_call,
                         (args.log_every, args.eval_every, args.checkpoint_every))
    pending: list[dict] = []  # metrics (device arrays) since the last log row
    compiled: dict[int, Any] = {}  # train_steps compiled per number of steps in a call
    queued: list[tuple[int, str, Any]] = []  # rows to write once their values are ready
    t_start = time.perf_counter()
    t_first = None  # when the first (compiling) call finished
    bar = tqdm(total=args.num_train_steps, initial=start,
               disable=not (args.progress and jax.process_index() == 0), desc="train",
               unit="step")

    def write_rows() -> None:  # blocks only on values that are (nearly) ready
        for done, kind, value in queued:
            if kind == "train":
                host = jax.device_get(value)
                row = {"train_loss": float(np.mean(np.concatenate([h["loss"] for h in host]))),
                       "grad_norm": float(np.mean(np.concatenate([h["grad_norm"]
                                                                  for h in host]))),
                       "learning_rate": float(host[-1]["learning_rate"][-1])}
                bar.set_postfix(loss=f"{row['train_loss']:.3f}")
            else:
                (loss_sum, weight_sum), _ = jax.device_get(value)
                loss = float(loss_sum) / max(float(weight_sum), 1.0)
                row = {"eval_loss": loss, "eval_perplexity": float(min(math.exp(loss), 1e4))}
                bar.write(f"step {done}: held-out loss {loss:.4f} "
                          f"(perplexity {row['eval_perplexity']:.2f})")
                allocator.release_free_memory()  # e.g. eval_sums' compile temporaries
            log(done, row)
        queued.clear()

    for first, n in chunks:
        batch = shard_steps(stack_steps([
            input_pipeline.train_batch(dataset.train, args.batch_size, args.context,
                                       args.seed, s, rows) for s in range(first, first + n)]),
            large_model.mesh(args))
        if n not in compiled:  # compile ahead, then free the compiler's temporaries
            compiled[n] = train_steps.lower(optimizer, batch, dropout_rng, schedule,
                                            args.grad_clip).compile()
            allocator.release_free_memory()
        optimizer, m = compiled[n](optimizer, batch, dropout_rng)  # = train_steps(...)
        write_rows()  # the previous call's rows, while this call runs
        pending.append(m)
        done = first + n
        bar.update(n)
        if t_first is None:
            jax.block_until_ready(m)
            t_first = time.perf_counter()
        if done % args.log_every == 0 or done == end:
            queued.append((done, "train", pending))
            pending = []
        if done % args.eval_every == 0 or done == end:
            queued.append((done, "eval", eval_sums(optimizer.target, held_out)))
        if done % args.checkpoint_every == 0 or done == end:
            write_rows()
            checkpoints.save_checkpoint(ckpt_dir, optimizer.unreplicate(), done,
                                        keep=args.keep_checkpoints)
    write_rows()
    jax.block_until_ready(optimizer)
    bar.close()
    t_end = time.perf_counter()
    result["final_step"] = max(start, end)
    result["wall_time_sec"] = t_end - t_start
    trained = end - start - (chunks[0][1] if chunks else 0)
    if t_first is not None and trained > 0:
        result["train_tokens_per_sec"] = trained * args.batch_size * args.context / (
            t_end - t_first)
    return optimizer


# -- Command line -----------------------------------------------------------------------------

_HELP = {
    "output_dir": "Where checkpoints, vocab.flaxen.json, config.json, metrics.jsonl, TensorBoard "
                  "events, curves.png and sample.txt go.",
    "data_dir": "Folder in which a relative --text_file (default tinyshakespeare.txt) is "
                "looked up; default $FLAXEN_DATA.",
    "text_file": "Train on this plain UTF-8 text file (first 90% trains, the rest evaluates). "
                 "Default: tinyshakespeare.txt in --data_dir.",
    "lm1b_dir": "The extracted LM1b release (see README.md); instead of --text_file.",
    "tokenizer": "char (one token per character) or sentencepiece (trained on the training "
                 "text). LM1b always uses sentencepiece.",
    "vocab_size": "SentencePiece vocabulary size (ignored by the char tokenizer).",
    "eval_fraction": "Share of the text, at its end, held out for evaluation.",
    "emb_dim": "Width of the token embeddings and of every layer.",
    "num_heads": "Attention heads per layer (must divide --emb_dim).",
    "num_layers": "Number of Transformer blocks.",
    "mlp_dim": "Hidden width of each feed-forward block (0: 4 x --emb_dim).",
    "context": "Tokens per training sequence.",
    "max_len": "Rows of the position table (0: --context).",
    "position": "Position encoding: learned or sinusoidal.",
    "tied_embeddings": "Use the input embedding matrix as the output projection.",
    "dropout_rate": "Dropout after attention and feed-forward blocks (0: off).",
    "attention_dropout_rate": "Dropout on the attention weights (0: off).",
    "dtype": "Computation dtype: float32 or bfloat16 (params stay float32).",
    "batch_size": "Global batch: sequences per step over all devices of all processes (a "
                  "multiple of the number of devices).",
    "num_train_steps": "Training steps in total; the learning-rate schedule spans them.",
    "learning_rate": "Peak learning rate of AdamW (after the warm-up).",
    "min_learning_rate": "Learning rate at the end of the cosine decay.",
    "warmup_steps": "Steps of linear warm-up from 0 to --learning_rate.",
    "weight_decay": "Decoupled weight decay on matrices (not on biases and norms).",
    "beta1": "Adam's decay rate of the first moment.",
    "beta2": "Adam's decay rate of the second moment.",
    "grad_clip": "Clip gradients to this global norm (0: off).",
    "seed": "Seed of the initialisation, the batches (per step) and dropout.",
    "eval_every": "Evaluate on the held-out text every this many steps (and at the end).",
    "eval_batch_size": "Global batch of the evaluation (a multiple of the number of devices).",
    "eval_batches": "Evaluate on only this many batches (0: the whole held-out text).",
    "steps_per_call": "Training steps per compiled call (lax.scan): fewer dispatches and "
                      "host round trips. Logging, evaluation and checkpoint intervals are "
                      "respected exactly.",
    "random_eval_batches": "At the end, also report nanoGPT's held-out estimate: the mean "
                           "loss of this many random batches of --batch_size windows "
                           "(0: off).",
    "log_every": "Write training metrics every this many steps.",
    "checkpoint_every": "Save a checkpoint every this many steps (and at the end).",
    "keep_checkpoints": "How many of the latest checkpoints to keep.",
    "resume": "Continue the run in --output_dir from its last checkpoint (same configuration; "
              "otherwise an error). Without it, a run starts afresh and replaces that run.",
    "stop_at_step": "Stop at this step (0: --num_train_steps); continue later with --resume.",
    "progress": "Show a progress bar (process 0 only).",
    "plot": "Write curves.png at the end.",
    "sample_length": "Tokens to sample from the model at the end (0: none).",
    "prompt": "Text the end-of-run sample continues.",
    "temperature": "Softmax temperature of the sample (0: greedy).",
    "top_k": "Sample among the k most likely tokens (0: all).",
    **large_model.HELP,
}

_DISTRIBUTED_HELP = {
    "coordinator_address": "Several processes: HOST:PORT of process 0, the same on every "
                           "process. Give it with --num_processes and --process_id, or none "
                           "of the three (one process, or a launcher JAX detects, e.g. SLURM).",
    "num_processes": "Several processes: how many take part (see --coordinator_address).",
    "process_id": "Several processes: this one, 0..num_processes-1.",
}


def _define_flags() -> None:
    for field in dataclasses.fields(TrainArgs):
        name, default = field.name, cast(Any, field.default)
        help_text = _HELP.get(name, "")
        if name == "max_train_sentences":
            flags.DEFINE_integer(name, None, "LM1b: use only the first N training sentences.")
        elif name in ("text_file", "lm1b_dir"):
            flags.DEFINE_string(name, None, help_text)
        elif name == "output_dir":
            flags.DEFINE_string(name, "/tmp/flaxen_lm", help_text)
        elif name == "num_train_steps":  # --num_steps, as in the other step-based examples
            flags.DEFINE_integer("num_steps", default, help_text)
            flags.DEFINE_integer(name, None, "Deprecated: the old name of --num_steps.")
        elif isinstance(default, bool):
            flags.DEFINE_bool(name, default, help_text)
        elif isinstance(default, int):
            flags.DEFINE_integer(name, default, help_text)
        elif isinstance(default, float):
            flags.DEFINE_float(name, default, help_text)
        else:
            flags.DEFINE_string(name, default, help_text)
    flags.DEFINE_string("model_dir", None, "Deprecated: the old name of --output_dir.")
    flags.DEFINE_bool("keep_malloc_buffers", True,
                      "Let glibc's malloc reuse XLA's per-call temporary buffer instead of "
                      "mapping fresh pages every call, in one malloc arena (see "
                      "allocator.py); no effect on results.")
    flags.DEFINE_string("coordinator_address", None, _DISTRIBUTED_HELP["coordinator_address"])
    flags.DEFINE_integer("num_processes", None, _DISTRIBUTED_HELP["num_processes"])
    flags.DEFINE_integer("process_id", None, _DISTRIBUTED_HELP["process_id"])


def fail(message: object) -> None:
    """A user error: one ``Error:`` line on stderr and exit status 2, no traceback."""
    logging.flush()
    print(f"Error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {argv[1:]} (flags are spelled --name=value).")
    FLAGS = flags.FLAGS
    if FLAGS.keep_malloc_buffers and allocator.keep_large_buffers():
        logging.info("glibc malloc: large buffers are reused, not re-mapped each call "
                     "(--nokeep_malloc_buffers turns this off).")
    try:
        config_lib.apply_config()  # --config file and --config.x.y overrides -> the flags
        # Before anything touches a device.
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
        if jax.process_index() != 0:  # errors and warnings only; process 0 logs the run
            logging.set_verbosity(logging.WARNING)
        if FLAGS.model_dir is not None:
            if FLAGS["output_dir"].present:
                raise RunConfigError("Give --output_dir only (--model_dir is its deprecated "
                                     "old name).")
            logging.warning("--model_dir is deprecated; use --output_dir.")
            FLAGS.output_dir = FLAGS.model_dir
        values = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(TrainArgs)}
        if values["num_train_steps"] is None:
            values["num_train_steps"] = FLAGS.num_steps
        elif FLAGS["num_steps"].present:
            raise RunConfigError("Give --num_steps only (--num_train_steps is its deprecated "
                                 "old name).")
        args = TrainArgs(**values)
        check_args(args)
        if args.lm1b_dir is not None and not FLAGS["tokenizer"].present:
            args.tokenizer = "sentencepiece"
        result = train_and_evaluate(args)
    except (FlaxenError, OSError) as e:  # data, flags, config, resume, files: user-fixable
        fail(e)
    if jax.process_index() != 0:
        return
    summary = {k: v for k, v in result.items() if k != "sample"}
    out = os.path.abspath(args.output_dir)
    summary["outputs"] = {name: os.path.join(out, name) for name in (
        "checkpoints", "config.json", tok.FILE_NAME, "metrics.jsonl", "curves.png",
        "sample.txt") if os.path.exists(os.path.join(out, name))}
    print(json.dumps(summary, indent=1))
    if "sample" in result:
        print("--- sample ---\n" + result["sample"])


def check_args(args: TrainArgs) -> None:
    """Flag values that cannot work, as a RunConfigError naming the flag."""
    for name in ("emb_dim", "num_heads", "num_layers", "context", "batch_size", "steps_per_call",
                 "num_train_steps", "eval_every", "eval_batch_size", "log_every",
                 "checkpoint_every", "keep_checkpoints"):
        if getattr(args, name) < 1:
            flag = "num_steps" if name == "num_train_steps" else name
            raise RunConfigError(f"--{flag}={getattr(args, name)}: expected a whole number >= 1.")
    if args.learning_rate <= 0 or not 0 < args.eval_fraction < 1:
        raise RunConfigError(f"--learning_rate={args.learning_rate} must be > 0 and "
                             f"--eval_fraction={args.eval_fraction} between 0 and 1.")
    large_model.check(args)


if __name__ == "__main__":
    # Flags are defined only when run as a program, so that tests can import this module
    # next to other examples that define flags of the same names.
    _define_flags()
    # Adds --config (configs/default.py) and its --config.x.y=value overrides; a bad flag
    # is one Error: line and exit status 2.
    app.run(main, flags_parser=config_lib.flags_parser(__file__))
