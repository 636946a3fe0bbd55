"""The ``MetricWriter`` interface of today's JAX examples (clu.metric_writers), a writer that
logs, one that fans out to several, and ``create_default_writer``.

Any object with these methods is a metric writer: :class:`SummaryWriter` (TensorBoard),
:class:`JsonlWriter` (JSON lines), :class:`LoggingWriter` (Python logging),
:class:`MultiWriter` (several at once) and :class:`AsyncWriter` (a background thread).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from flaxen.metrics._process import writes_here
from flaxen.metrics.summaries import flatten_hparams

logger = logging.getLogger("flaxen.metrics")


@runtime_checkable
class MetricWriter(Protocol):
    """What a metric writer has (the methods of ``clu.metric_writers.MetricWriter``).

    ``step`` is an int; mappings go from a name to a value: scalars are one-element arrays
    or numbers; images are batches ``[N, H, W, C]`` or single ``[H, W, C]``; histograms take
    any array (flattened); texts are strings; hyper-parameters bools, numbers or strings.
    """

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None: ...

    def write_images(self, step: int, images: Mapping[str, Any]) -> None: ...

    def write_histograms(self, step: int, arrays: Mapping[str, Any],
                         num_buckets: int | Mapping[str, int] | None = None) -> None: ...

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None: ...

    def write_hparams(self, hparams: Mapping[str, Any]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _number(value: Any) -> str:
    arr = np.asarray(value)
    return f"{float(arr.reshape(())):.6g}" if arr.size == 1 else f"array{arr.shape}"


class LoggingWriter:
    """Writes metrics as log lines (logger ``flaxen.metrics``, level INFO).

    ``[12] loss=0.25, accuracy=0.9``; images and histograms are logged as their shapes and
    ranges. Like the file writers, it logs on process 0 only unless ``all_processes``.
    """

    def __init__(self, *, all_processes: bool = False, log: logging.Logger | None = None):
        self.active = writes_here(all_processes)
        self.logger = log or logger

    def _log(self, message: str, *args: Any) -> None:
        if self.active:
            self.logger.info(message, *args)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        self._log("[%d] %s", step, ", ".join(f"{k}={_number(v)}" for k, v in scalars.items()))

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        for name, value in images.items():
            self._log("[%d] image %s: shape %s", step, name, np.shape(value))

    def write_histograms(self, step: int, arrays: Mapping[str, Any],
                         num_buckets: int | Mapping[str, int] | None = None) -> None:
        for name, value in arrays.items():
            arr = np.asarray(value).astype(np.float64)
            self._log("[%d] histogram %s: %d values in [%.6g, %.6g], mean %.6g", step, name,
                      arr.size, arr.min(), arr.max(), arr.mean())

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for name, text in texts.items():
            self._log("[%d] %s: %s", step, name, text)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        flat = flatten_hparams(hparams)
        self._log("hyper-parameters: %s", ", ".join(f"{k}={v!r}" for k, v in flat.items()))

    def flush(self) -> None:
        for handler in self.logger.handlers:
            handler.flush()

    def close(self) -> None:
        self.flush()


class MultiWriter:
    """Passes every call on to each of ``writers``, in order.

    ``close()`` closes every writer even when one fails, then raises the first error.
    """

    def __init__(self, writers: Sequence[MetricWriter]):
        self.writers = list(writers)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_images(step, images)

    def write_histograms(self, step: int, arrays: Mapping[str, Any],
                         num_buckets: int | Mapping[str, int] | None = None) -> None:
        for w in self.writers:
            w.write_histograms(step, arrays, num_buckets)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for w in self.writers:
            w.write_texts(step, texts)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_hparams(hparams)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        errors = []
        for w in self.writers:
            try:
                w.close()
            except Exception as e:  # close the others first
                errors.append(e)
        if errors:
            raise errors[0]

    def __enter__(self) -> MultiWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_default_writer(logdir: str | os.PathLike | None, *, just_logging: bool = False,
                          asynchronous: bool = False, jsonl_name: str = "metrics.jsonl",
                          all_processes: bool = False) -> MetricWriter:
    """The writer most training loops want: log lines, TensorBoard and JSON lines.

    Args:
      logdir: the folder for the TensorBoard event file and ``jsonl_name`` (created if
        needed); None logs only.
      just_logging: log only (no files), as clu's ``just_logging``.
      asynchronous: wrap the writer in an :class:`AsyncWriter`, so encoding and writing
        (a large image, a histogram) happen on a background thread.
      jsonl_name: the JSON-lines file in ``logdir``.
      all_processes: write on every process, not only process 0.

    Returns:
      A :class:`MultiWriter` of ``LoggingWriter``, ``SummaryWriter(logdir)`` and
      ``JsonlWriter(logdir / jsonl_name)`` (or an ``AsyncWriter`` around it).
    """
    from flaxen.metrics.async_writer import AsyncWriter
    from flaxen.metrics.jsonl import JsonlWriter
    from flaxen.metrics.tensorboard import SummaryWriter

    writers: list[MetricWriter] = [LoggingWriter(all_processes=all_processes)]
    if logdir is not None and not just_logging:
        writers.append(SummaryWriter(logdir, all_processes=all_processes))
        writers.append(JsonlWriter(Path(logdir) / jsonl_name, all_processes=all_processes))
    writer: MetricWriter = MultiWriter(writers)
    return AsyncWriter(writer) if asynchronous else writer
