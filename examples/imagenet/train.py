"""ResNet on ImageNet (or any image folder, or Fashion-MNIST), data-parallel with jax.jit.

    python -m examples.imagenet.train --data_dir=/data/imagenet --output_dir=/tmp/resnet50
    # several processes: add to each host's command
    #   --coordinator_address=HOST0:1234 --num_processes=N --process_id=I

Defaults reproduce the standard 90-epoch ResNet-50 recipe (expected top-1 about 76%): SGD
with Nesterov momentum 0.9, weight decay 1e-4, learning rate 0.1 per 256 images scaled
linearly with the batch size, 5 epochs of linear warm-up then cosine decay, 224x224 random
resized crops with flips. See README.md for layouts, commands and expected numbers.

Data parallelism: the optimizer and the BatchNorm statistics are replicated on every device
of every process (``optimizer.replicate()``), each global batch is split along the device
mesh (each process decodes only its own rows of it), and one ``jax.jit`` step runs on all
devices. Gradients and BatchNorm batch statistics are computed
over the global batch, so the running averages are identical on every device: nothing to
average before evaluating or checkpointing.

Everything goes to ``--output_dir`` (process 0 writes): ``checkpoints/`` (one per epoch),
``tensorboard/``, ``metrics.jsonl`` (one line per log step and per epoch), ``config.json``
and ``curves.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from jax.sharding import Mesh
from tqdm import tqdm

from flaxen import distributed, jax_utils, metrics, nn, optim, parallel
from flaxen.errors import FlaxenError
from flaxen.optim import schedules
from flaxen.training import checkpoints

try:  # as part of the repository (tests, `python -m examples.imagenet.train`)
    from examples import config as config_lib
    from examples.imagenet import input_pipeline, models
except ImportError:  # as a script in a forked copy: `python train.py`
    sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import config as config_lib  # type: ignore[no-redef]  # examples/config.py
    import input_pipeline  # type: ignore[no-redef]
    import models  # type: ignore[no-redef]


def _f(default: Any, help_text: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass
class Config:
    """Every hyper-parameter; the defaults are the 90-epoch ResNet-50 recipe."""

    dataset: str = _f("imagenet", "imagenet (ImageNet or any folder of train/<class>/*, "
                      "val/<class>/*) | fashion_mnist (IDX files)")
    data_dir: str = _f("", "holds train/ and val/ (imagenet; default $FLAXEN_DATA/imagenet) "
                       "or the four IDX files (fashion_mnist; default "
                       "$FLAXEN_DATA/fashion-mnist, then /usr/share/datasets/fashion-mnist)")
    model: str = _f("resnet50", 'resnet18 | resnet34 | resnet50 | resnet101 | resnet152')
    num_filters: int = _f(64, 'width of the first stage')
    small_inputs: bool = _f(False, '3x3 stem, no max-pool (28x28 / 32x32 images)')
    zero_init_last_bn: bool = _f(True, 'last BN scale of each block starts at zero')
    half_precision: bool = _f(False, 'bfloat16 compute, float32 params and statistics')
    image_size: int = _f(224, 'side of the square training and evaluation crops')
    batch_size: int = _f(256, 'global batch, over all devices of all processes')
    learning_rate: float = _f(0.1, 'for a batch of 256; the peak is this x batch_size / 256')
    momentum: float = _f(0.9, 'SGD momentum coefficient')
    nesterov: bool = _f(True, 'Nesterov momentum')
    weight_decay: float = _f(1e-4, 'L2 coefficient added to every gradient')
    label_smoothing: float = _f(0.0, 'e.g. 0.1; 0 disables')
    num_epochs: float = _f(90.0, 'training length (the cosine ends here)')
    warmup_epochs: float = _f(5.0, 'linear warm-up from 0 to the peak rate')
    num_train_steps: int = _f(-1, '> 0: train this many steps in total (the schedule spans them)')
    eval_batch_size: int = _f(256, 'global evaluation batch (a multiple of the devices)')
    max_eval_batches: int = _f(-1, '> 0: evaluate on only this many batches')
    num_devices: int = _f(0, 'train on this many local devices (0: all); several processes '
                          'always use every device')
    num_workers: int = _f(0, 'decoding threads; 0: cpu_count + 4')
    seed: int = _f(0, 'initialisation, shuffling and augmentation')
    rng_impl: str = _f("threefry2x32", 'PRNG for init (rbg compiles faster)')
    log_every_steps: int = _f(100, 'train metrics to TensorBoard/jsonl')
    checkpoint_keep: int = _f(3, 'how many epoch checkpoints to keep')
    resume: bool = _f(False, 'continue the run in --output_dir from its last checkpoint '
                      '(same configuration, else an error); without it a run starts afresh')
    progress: bool = _f(True, 'tqdm progress bars (process 0 only)')
    plot: bool = _f(True, 'curves.png at the end')


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # the Debian package's location

# Fields that may differ when a run is resumed (how long, on what, how it is shown); every
# other field must match the run being continued.
RESUMABLE_CHANGES = ("num_devices", "num_workers", "resume", "progress", "plot",
                     "log_every_steps", "checkpoint_keep", "max_eval_batches",
                     "eval_batch_size")


class UsageError(FlaxenError):
    """A flag value or a combination of flags this run cannot use."""


# -- Losses and metrics -------------------------------------------------------------------


def cross_entropy(log_probs: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
    """Per-example cross-entropy ``[B]`` against smoothed one-hot targets (float32)."""
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing > 0:
        on = jnp.float32(1.0 - label_smoothing)
        targets = targets * on + jnp.float32(label_smoothing / num_classes)
    return -jnp.sum(targets * log_probs, axis=-1)


def topk_correct(log_probs: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """``[B]`` float32: 1 where the label is among the ``k`` highest scores."""
    k = min(k, log_probs.shape[-1])
    _, top = jax.lax.top_k(log_probs, k)
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


# -- Steps ---------------------------------------------------------------------------------


def lr_schedule_args(config: Config, steps_per_epoch: int,
                     total_steps: int) -> tuple[float, int, int]:
    """``(peak, warmup_steps, decay_steps)``: peak ``lr * batch / 256``, warm-up for
    ``warmup_epochs``, cosine decay to zero at ``total_steps``."""
    peak = config.learning_rate * config.batch_size / 256
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    warmup = min(warmup, max(total_steps - 1, 0))
    return peak, warmup, max(total_steps, warmup + 1)


# The jitted functions are cached on their (hashable) settings, so a second run in the
# same process with the same settings (a test, a notebook) does not compile again. The
# model class is part of the key: the steps get it from the Model they are passed.


@functools.lru_cache(maxsize=8)
def jitted_init(model_def: Any) -> Any:
    return jax.jit(model_def.init_with_state)


@functools.lru_cache(maxsize=8)
def jitted_train_step(model_def: Any, num_classes: int, label_smoothing: float, dtype: Any,
                      mean: tuple, std: tuple, peak: float, warmup: int, decay: int) -> Any:
    lr_fn = schedules.warmup_cosine(peak, warmup, decay)
    return jax.jit(functools.partial(
        train_step, lr_fn=lr_fn, num_classes=num_classes,
        label_smoothing=label_smoothing, dtype=dtype, mean=mean, std=std),
        donate_argnums=(0, 1))


@functools.lru_cache(maxsize=8)
def jitted_eval_step(model_def: Any, num_classes: int, dtype: Any, mean: tuple,
                     std: tuple) -> Any:
    return jax.jit(functools.partial(eval_step, num_classes=num_classes,
                                     dtype=dtype, mean=mean, std=std))


def train_step(optimizer: optim.Optimizer, batch_stats: nn.Collection, batch: dict,
               *, lr_fn: Any, num_classes: int, label_smoothing: float, dtype: Any,
               mean: Any, std: Any) -> tuple[optim.Optimizer, nn.Collection, dict]:
    """One SGD step on a (sharded) global batch. Returns new optimizer, statistics, metrics."""
    images = input_pipeline.normalize(batch["image"], mean, std, dtype)
    labels = batch["label"]

    def loss_fn(model: nn.Model) -> tuple[jax.Array, tuple[Any, jax.Array]]:
        log_probs, new_stats = model.call_with_state(batch_stats, images, train=True)
        loss = jnp.mean(cross_entropy(log_probs, labels, num_classes, label_smoothing))
        return loss, (new_stats, log_probs)

    lr = lr_fn(optimizer.state.step)
    optimizer, loss, (new_stats, log_probs) = optimizer.optimize(loss_fn, learning_rate=lr)
    step_metrics = {
        "loss": loss,
        "top1": jnp.mean(topk_correct(log_probs, labels, 1)),
        "top5": jnp.mean(topk_correct(log_probs, labels, 5)),
        "learning_rate": lr,
    }
    return optimizer, new_stats, step_metrics


def eval_step(model: nn.Model, batch_stats: nn.Collection, batch: dict, *, num_classes: int,
              dtype: Any, mean: Any, std: Any) -> dict:
    """Sums over the real (mask 1) examples of a batch: loss, top-1 and top-5 hits, count."""
    images = input_pipeline.normalize(batch["image"], mean, std, dtype)
    log_probs, _ = model.call_with_state(batch_stats, images, train=False, _mutable=False)
    mask = batch["mask"]
    labels = batch["label"]
    return {
        "loss": jnp.sum(cross_entropy(log_probs, labels, num_classes) * mask),
        "top1": jnp.sum(topk_correct(log_probs, labels, 1) * mask),
        "top5": jnp.sum(topk_correct(log_probs, labels, 5) * mask),
        "count": jnp.sum(mask),
    }


# -- Data ----------------------------------------------------------------------------------


def create_datasets(config: Config) -> tuple[Any, Any, tuple, tuple, tuple[int, ...]]:
    """``(train, eval, mean, std, input_shape)`` for ``config.dataset``."""
    workers = config.num_workers or None
    flaxen_data = os.environ.get("FLAXEN_DATA", "")
    if config.dataset == "fashion_mnist":
        candidates = [config.data_dir] if config.data_dir else [
            d for d in (os.path.join(flaxen_data, "fashion-mnist") if flaxen_data else "",
                        FASHION_MNIST_DIR) if d and os.path.isdir(d)]
        if not candidates:
            raise input_pipeline.DatasetError(
                "No Fashion-MNIST found in $FLAXEN_DATA/fashion-mnist or "
                f"{FASHION_MNIST_DIR}: install it with `apt-get install dataset-fashion-mnist` "
                "or pass --data_dir=DIR with the four IDX files.")
        data_dir = candidates[0]
        x_train, y_train = input_pipeline.load_idx_dataset(data_dir, "train")
        x_test, y_test = input_pipeline.load_idx_dataset(data_dir, "test")
        train = input_pipeline.ArrayPipeline(x_train, y_train, 10, config.batch_size, True,
                                             seed=config.seed)
        evals = input_pipeline.ArrayPipeline(x_test, y_test, 10, config.eval_batch_size, False)
        return (train, evals, input_pipeline.FASHION_MNIST_MEAN,
                input_pipeline.FASHION_MNIST_STDDEV, x_train.shape[1:])
    if config.dataset != "imagenet":
        raise input_pipeline.DatasetError(
            f"Unknown --dataset={config.dataset!r}; use imagenet or fashion_mnist.")
    data_dir = config.data_dir
    if not data_dir and flaxen_data and os.path.isdir(os.path.join(flaxen_data, "imagenet")):
        data_dir = os.path.join(flaxen_data, "imagenet")
    if not data_dir:
        raise input_pipeline.DatasetError("--data_dir is required for --dataset=imagenet (the "
                                          "folder holding train/ and val/), or put them in "
                                          "$FLAXEN_DATA/imagenet.")
    data_dir = os.path.abspath(data_dir)  # errors name the folder in full
    train_folder = input_pipeline.ImageFolder(data_dir, "train")
    val_folder = input_pipeline.ImageFolder(data_dir, "val", train_folder.classes)
    size = config.image_size
    train = input_pipeline.ImageFolderPipeline(train_folder, config.batch_size, size, True,
                                               seed=config.seed, num_workers=workers)
    evals = input_pipeline.ImageFolderPipeline(val_folder, config.eval_batch_size, size, False,
                                               num_workers=workers)
    return (train, evals, input_pipeline.MEAN_RGB, input_pipeline.STDDEV_RGB,
            (size, size, 3))


def make_mesh(num_devices: int) -> Mesh:
    """A one-axis ``batch`` mesh over the first ``num_devices`` local devices (0: all), or
    over every device of every process in a multi-process run."""
    if jax.process_count() > 1:
        if num_devices > 0:
            raise UsageError(f"--num_devices={num_devices} is for one process; with "
                             f"{jax.process_count()} processes every device is used. Leave "
                             "--num_devices at 0.")
        return parallel.default_mesh()
    devices = jax.local_devices()
    n = len(devices) if num_devices <= 0 else num_devices
    if n > len(devices):
        raise input_pipeline.DatasetError(f"--num_devices={n} but only {len(devices)} local "
                                          "devices exist.")
    return Mesh(np.array(devices[:n]), (parallel.BATCH_AXIS,))


# -- The loop ------------------------------------------------------------------------------


def evaluate(eval_fn: Any, model: nn.Model, batch_stats: nn.Collection, data: Any,
             mesh: Mesh, max_batches: int, progress: bool) -> dict[str, float]:
    """Top-1/top-5 accuracy and loss over the evaluation set (or its first batches)."""
    totals: dict[str, float] = {}
    n = data.steps_per_epoch if max_batches <= 0 else min(max_batches, data.steps_per_epoch)
    rows = distributed.local_rows(data.batch_size, mesh)
    batches = input_pipeline.background(data.epoch(rows=rows))
    sums = []
    for i, batch in enumerate(tqdm(jax_utils.prefetch_to_device(batches, 2, mesh), total=n,
                                   desc="eval", disable=not progress, leave=False)):
        if i >= n:
            break
        sums.append(eval_fn(model, batch_stats, batch))
    for s in jax.device_get(sums):
        for k, v in s.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = max(totals.pop("count", 0.0), 1.0)
    return {k: v / count for k, v in totals.items()}


def plot_curves(history: list[dict], steps: list[dict], path: str, title: str) -> None:
    """Writes a PNG of train/eval loss and top-1: per epoch, or per logged step (training)
    with the evaluations at their steps when the run has fewer than three epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_step = len(history) < 3 and bool(steps)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "top1")):
        if per_step:
            ax.plot([r["step"] for r in steps], [r[f"train_{key}"] for r in steps], "-",
                    label="train (per step)")
            ax.plot([h["step"] for h in history], [h[f"eval_{key}"] for h in history], "s",
                    label="eval")
            ax.set_xlabel("step")
        else:
            epochs = [h["epoch"] for h in history]
            ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
            ax.plot(epochs, [h[f"eval_{key}"] for h in history], "s-", label="eval")
            ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def start_afresh(output_dir: str) -> None:
    """Removes an earlier run's files from ``output_dir`` (process 0; without --resume)."""
    if jax.process_index() != 0:
        return
    for pattern in ("checkpoints/checkpoint_*", "tensorboard/events.out.tfevents.*",
                    "metrics.jsonl", "curves.png"):
        for path in glob.glob(os.path.join(output_dir, pattern)):
            logging.info("Starting afresh: removing %s (pass --resume to continue a run).", path)
            os.remove(path)


def check_run_config(path: str, config: Config) -> None:
    """Writes ``config.json``, or with --resume first checks that it describes this run."""
    now = {k: v for k, v in dataclasses.asdict(config).items() if k not in RESUMABLE_CHANGES}
    if config.resume and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        diff = [f"--{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items()
                if saved.get(k) != v]
        if diff:
            raise UsageError(f"--resume: {path} describes another run ({'; '.join(diff)}). "
                             "Resume with the same flags, or use a new --output_dir.")
    if jax.process_index() == 0:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(now, f, indent=1)
        os.replace(path + ".tmp", path)


def train_and_evaluate(config: Config, output_dir: str) -> dict[str, Any]:
    """Trains and evaluates; returns the final state and the per-epoch history.

    Returns:
      ``{'optimizer', 'batch_stats', 'history', 'train_images_per_sec', 'skipped'}`` with
      the optimizer and statistics unreplicated (one copy).
    """
    mesh = make_mesh(config.num_devices)
    n_dev = mesh.devices.size
    if config.batch_size % n_dev or config.eval_batch_size % n_dev:
        raise input_pipeline.DatasetError(
            f"--batch_size={config.batch_size} and --eval_batch_size="
            f"{config.eval_batch_size} must be multiples of the {n_dev} devices.")
    train_data, eval_data, mean, std, input_shape = create_datasets(config)
    num_classes = train_data.num_classes
    steps_per_epoch = train_data.steps_per_epoch
    total_steps = (config.num_train_steps if config.num_train_steps > 0
                   else int(round(config.num_epochs * steps_per_epoch)))
    num_epochs = -(-total_steps // steps_per_epoch)
    dtype = jnp.bfloat16 if config.half_precision else jnp.float32

    model_def = models.get_model(config.model).partial(
        num_classes=num_classes, num_filters=config.num_filters, dtype=dtype,
        small_inputs=config.small_inputs, zero_init_last_bn=config.zero_init_last_bn)
    rng = jax.random.key(config.seed, impl=config.rng_impl)
    init_x = jnp.zeros((2, *input_shape), jnp.float32)
    _, params, batch_stats = jitted_init(model_def)(rng, init_x)
    opt_def = optim.Momentum(learning_rate=config.learning_rate, beta=config.momentum,
                             weight_decay=config.weight_decay, nesterov=config.nesterov)
    optimizer = opt_def.create(nn.Model(model_def, params))

    ckpt_dir = os.path.join(output_dir, "checkpoints")
    os.makedirs(output_dir, exist_ok=True)
    check_run_config(os.path.join(output_dir, "config.json"), config)
    if not config.resume:
        start_afresh(output_dir)
    start_epoch = 0
    if config.resume:
        template = {"optimizer": optimizer, "batch_stats": batch_stats,
                    "epoch": np.int32(0)}
        restored = checkpoints.restore_checkpoint(ckpt_dir, template)
        if restored is not template:
            optimizer, batch_stats = restored["optimizer"], restored["batch_stats"]
            start_epoch = int(restored["epoch"])
            logging.info("Resumed from %s at epoch %d.", ckpt_dir, start_epoch)

    peak, warmup, decay = lr_schedule_args(config, steps_per_epoch, total_steps)
    p_train = jitted_train_step(model_def, num_classes, config.label_smoothing, dtype, mean,
                                std, peak, warmup, decay)
    p_eval = jitted_eval_step(model_def, num_classes, dtype, mean, std)
    optimizer = optimizer.replicate(mesh)
    batch_stats = parallel.replicate(batch_stats, mesh)

    step = int(jax.device_get(optimizer.state.step))
    # A run killed after its last checkpoint logged steps that this run logs again.
    old_rows = metrics.truncate_jsonl(os.path.join(output_dir, "metrics.jsonl"), step)
    metrics.truncate_events(os.path.join(output_dir, "tensorboard"), step)
    tb = metrics.SummaryWriter(os.path.join(output_dir, "tensorboard"))
    jsonl = metrics.JsonlWriter(os.path.join(output_dir, "metrics.jsonl"))
    history: list[dict] = []  # this run's epochs (returned)
    old_history = [r for r in old_rows if "epoch" in r]  # for the plot
    step_rows = [r for r in old_rows if "epoch" not in r]
    images_per_sec: list[float] = []
    main_process = jax.process_index() == 0
    train_rows = distributed.local_rows(config.batch_size, mesh)
    try:
        for epoch in range(start_epoch, num_epochs):
            steps = min(steps_per_epoch, total_steps - step)
            batches = input_pipeline.background(train_data.epoch(epoch, train_rows), size=4)
            bar = tqdm(jax_utils.prefetch_to_device(batches, 2, mesh), total=steps,
                       desc=f"epoch {epoch + 1}/{num_epochs}",
                       disable=not (config.progress and main_process))
            epoch_metrics, pending = [], []
            t0, timed_images = None, 0
            for i, batch in enumerate(bar):
                if i >= steps:
                    break
                optimizer, batch_stats, m = p_train(optimizer, batch_stats, batch)
                pending.append(m)
                step += 1
                if i == 0:  # the first step compiles; time from its end
                    jax.block_until_ready(m)
                    t0 = time.perf_counter()
                else:
                    timed_images += config.batch_size
                if step % config.log_every_steps == 0 or i == steps - 1:
                    host = jax.device_get(pending)
                    epoch_metrics.extend(host)
                    pending = []
                    last = {k: float(v) for k, v in host[-1].items()}
                    bar.set_postfix(loss=f"{last['loss']:.3f}", top1=f"{last['top1']:.3f}")
                    for k, v in last.items():
                        tb.scalar(f"train/{k}", v, step)
                    jsonl.write(step, {f"train_{k}": v for k, v in last.items()})
                    step_rows.append({"step": step, **{f"train_{k}": v for k, v in last.items()}})
            jax.block_until_ready(optimizer)
            if t0 is not None and timed_images:
                images_per_sec.append(timed_images / (time.perf_counter() - t0))
            bar.close()
            model = optimizer.target
            result = evaluate(p_eval, model, batch_stats, eval_data, mesh,
                              config.max_eval_batches, config.progress)
            summary = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": float(np.mean([m["loss"] for m in epoch_metrics])),
                "train_top1": float(np.mean([m["top1"] for m in epoch_metrics])),
                **{f"eval_{k}": v for k, v in result.items()},
            }
            if images_per_sec:
                summary["train_images_per_sec"] = images_per_sec[-1]
            history.append(summary)
            for k, v in summary.items():
                if k not in ("epoch", "step"):
                    tb.scalar(f"epoch/{k}", v, step)
            jsonl.write(step, {k: v for k, v in summary.items() if k != "step"})
            tb.flush()
            jsonl.flush()
            logging.info("epoch %d: %s", epoch + 1, ", ".join(
                f"{k}={v:.4f}" for k, v in summary.items() if k not in ("epoch", "step")))
            host_state = {"optimizer": optimizer.unreplicate(),
                          "batch_stats": parallel.unreplicate(batch_stats),
                          "epoch": np.int32(epoch + 1)}
            checkpoints.save_checkpoint(ckpt_dir, host_state, epoch + 1,
                                        keep=config.checkpoint_keep, overwrite=True)
    finally:
        tb.close()
        jsonl.close()
    skipped = train_data.skipped.count + eval_data.skipped.count
    if skipped:
        logging.warning("%d unreadable images were skipped (see the log for their paths).",
                        skipped)
    if config.plot and history and main_process:
        plot_curves(old_history + history, step_rows, os.path.join(output_dir, "curves.png"),
                    f"{config.model} on {config.dataset}: learning curves")
    return {
        "optimizer": optimizer.unreplicate(),
        "batch_stats": parallel.unreplicate(batch_stats),
        "history": history,
        "train_images_per_sec": float(np.median(images_per_sec)) if images_per_sec else 0.0,
        "skipped": skipped,
    }


# -- Command line --------------------------------------------------------------------------


def _define_flags() -> None:
    for field in dataclasses.fields(Config):
        default = field.default
        help_text = field.metadata["help"]
        define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
                  float: flags.DEFINE_float, str: flags.DEFINE_string}[type(default)]
        if field.name == "num_train_steps":  # --num_steps, as in the other examples
            define("num_steps", default, help_text)
            flags.DEFINE_integer(field.name, None, "Deprecated: the old name of --num_steps.")
        else:
            define(field.name, default, help_text)
    flags.DEFINE_string("output_dir", "/tmp/flaxen_imagenet", "Where checkpoints, TensorBoard "
                        "events, metrics.jsonl, config.json and curves.png go.")
    flags.DEFINE_string("model_dir", None, "Deprecated: the old name of --output_dir.")
    flags.DEFINE_string("coordinator_address", None, "Several processes: HOST:PORT of process "
                        "0, the same on every process. Give it with --num_processes and "
                        "--process_id, or none of the three (one process, or a launcher JAX "
                        "detects, e.g. SLURM).")
    flags.DEFINE_integer("num_processes", None, "Several processes: how many take part.")
    flags.DEFINE_integer("process_id", None, "Several processes: this one, "
                         "0..num_processes-1.")


def config_from_flags() -> Config:
    """A ``Config`` with every field read from the flag of the same name (``num_train_steps``
    from ``--num_steps``, or its deprecated old name ``--num_train_steps``)."""
    FLAGS = flags.FLAGS
    values = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(Config)}
    if values["num_train_steps"] is None:
        values["num_train_steps"] = FLAGS.num_steps
    elif FLAGS["num_steps"].present:
        raise UsageError("Give --num_steps only (--num_train_steps is its deprecated old name).")
    return Config(**values)


def fail(message: object) -> None:
    """A user error: one ``Error:`` line on stderr and exit status 2, no traceback."""
    logging.flush()
    print(f"Error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {argv[1:]} (flags are spelled --name=value).")
    FLAGS = flags.FLAGS
    try:
        # Before anything touches a device.
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
        if jax.process_index() != 0:  # errors and warnings only; process 0 logs the run
            logging.set_verbosity(logging.WARNING)
        output_dir = FLAGS.output_dir
        if FLAGS.model_dir is not None:
            if FLAGS["output_dir"].present:
                raise UsageError("Give --output_dir only (--model_dir is its deprecated old "
                                 "name).")
            logging.warning("--model_dir is deprecated; use --output_dir.")
            output_dir = FLAGS.model_dir
        # --config file and --config.x.y overrides -> the flat flags (model.name: --model).
        config_lib.apply_config(renames={"model.name": "model"})
        config = config_from_flags()
        check_config(config)
        logging.info("Config: %s", config)
        logging.info("Devices: %s", jax.devices())
        result = train_and_evaluate(config, output_dir)
    except (FlaxenError, OSError) as e:  # data, flags, resume, files: the user can fix these
        fail(e)
    if jax.process_index() == 0 and result["history"]:
        last = result["history"][-1]
        out = os.path.abspath(output_dir)
        print(f"final: eval_top1={last['eval_top1']:.4f} eval_top5={last['eval_top5']:.4f} "
              f"train_images_per_sec={result['train_images_per_sec']:.1f}\n"
              f"outputs in {out}: checkpoints/, tensorboard/, metrics.jsonl, config.json, "
              "curves.png")


def check_config(config: Config) -> None:
    """Flag values that cannot work, as a UsageError naming the flag."""
    for name in ("num_filters", "image_size", "batch_size", "eval_batch_size",
                 "log_every_steps", "checkpoint_keep"):
        if getattr(config, name) < 1:
            raise UsageError(f"--{name}={getattr(config, name)}: expected a whole number >= 1.")
    if config.num_epochs <= 0 or config.learning_rate <= 0:
        raise UsageError(f"--num_epochs={config.num_epochs} and --learning_rate="
                         f"{config.learning_rate} must be > 0.")


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=config_lib.flags_parser(__file__))  # adds --config
