"""A TensorBoard ``SummaryWriter`` that needs no TensorFlow.

It writes real event files: a TFRecord stream (see :mod:`flaxen.metrics.tfrecord`) of
``Event`` protocol-buffer messages encoded by hand (:mod:`flaxen.metrics.protobuf`; the
summary values in :mod:`flaxen.metrics.summaries`)::

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
              Summary summary = 5; }
    Summary { repeated Value value = 1; }

Two spellings of the same writer: the pre-release one (``scalar(tag, value, step)``,
``image``, ``histogram``, ``text``) and the one today's JAX examples use (clu's
``MetricWriter``: ``write_scalars(step, mapping)``, ``write_images``, ``write_histograms``,
``write_texts``, ``write_hparams``). All values of one ``write_*`` call go in one event.

Example::

    writer = SummaryWriter('/tmp/run')
    writer.scalar('train_loss', 0.25, step=1)
    writer.write_scalars(2, {'train_loss': 0.125, 'lr': 0.1})
    writer.close()
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from jax.typing import ArrayLike

from flaxen.metrics import protobuf as pb
from flaxen.metrics import summaries, tfrecord
from flaxen.metrics._process import writes_here
from flaxen.metrics.images import SummaryError as SummaryError
from flaxen.metrics.images import encode_png as encode_png
from flaxen.metrics.reading import read_events as read_events
from flaxen.metrics.reading import read_scalars as read_scalars

_instance_counter = 0


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise SummaryError(f"Cannot create the log folder {str(path)!r} (resolved: "
                           f"{path.resolve()}): a file of that name is in the way.") from e


class SummaryWriter:
    """Writes scalars, images, histograms, text and hyper-parameters to a TensorBoard event file.

    Args:
      log_dir: folder for the event file (created if needed). Point ``tensorboard --logdir``
        at it or at a parent folder.
      all_processes: write on every process. By default only process 0 of a multi-process
        run (``jax.process_index() == 0``) writes; elsewhere the writer is a no-op that
        creates no file (values are still checked, so a bad value fails on every process).
    """

    def __init__(self, log_dir: str | os.PathLike, *, all_processes: bool = False):
        global _instance_counter
        _instance_counter += 1
        self.log_dir = Path(log_dir)
        self.active = writes_here(all_processes)
        self._closed = False
        self.path = self._name(_instance_counter)
        self._file: BinaryIO | None = None
        if self.active:
            _make_dir(self.log_dir)
            # "x": never overwrite a file (another writer's, started in the same second).
            while self._file is None:
                try:
                    self._file = open(self.path, "xb")  # closed in close()
                except FileExistsError:
                    _instance_counter += 1
                    self.path = self._name(_instance_counter)
            self._write_event(pb.bytes_field(3, "brain.Event:2"), step=None)

    def _name(self, counter: int) -> Path:
        # The ".flaxen" suffix keeps the name apart from TensorBoard's and PyTorch's writers,
        # which name files the same way up to the counter and open them with "w".
        return self.log_dir / (f"events.out.tfevents.{int(time.time()):010d}."
                               f"{socket.gethostname()}.{os.getpid()}.{counter}.flaxen")

    # -- plumbing --------------------------------------------------------------------------

    def _write_event(self, payload: bytes, step: int | None) -> None:
        if self._closed:
            raise SummaryError(f"SummaryWriter for {self.log_dir} (resolved: "
                               f"{self.log_dir.resolve()}) is closed.")
        if self._file is None:  # not the writing process
            return
        event = pb.double_field(1, time.time())
        if step is not None:
            event += pb.int_field(2, int(step))
        tfrecord.write_record(self._file, event + payload)
        self._file.flush()

    def _write_values(self, values: list[bytes], step: int) -> None:
        if values:
            summary = b"".join(pb.bytes_field(1, v) for v in values)  # Summary.value
            self._write_event(pb.bytes_field(5, summary), step)

    # -- the pre-release API ---------------------------------------------------------------

    def scalar(self, tag: str, value: ArrayLike, step: int) -> None:
        """Writes one scalar (any array or number with a single element) at ``step``."""
        self._write_values([summaries.scalar_value(tag, value)], step)

    def image(self, tag: str, image: ArrayLike, step: int) -> None:
        """One image ``[H, W]`` or ``[H, W, C]``, C = 1, 3 or 4 (uint8, or floats in [0, 1])."""
        self._write_values([summaries.image_value(tag, image)], step)

    def histogram(self, tag: str, values: ArrayLike, step: int, bins: int | None = None) -> None:
        """Writes a histogram of ``values`` (flattened) with ``bins`` buckets (default 30)."""
        self._write_values([summaries.histogram_value(tag, values, bins)], step)

    def text(self, tag: str, textdata: str | bytes, step: int) -> None:
        """Writes a string (rendered as Markdown by TensorBoard's text plugin)."""
        self._write_values([summaries.text_value(tag, textdata)], step)

    # -- the MetricWriter API (clu.metric_writers) -----------------------------------------

    def write_scalars(self, step: int, scalars: Mapping[str, ArrayLike]) -> None:
        """Writes ``{name: one-element array or number}`` at ``step`` (stored as float32)."""
        self._write_values([summaries.scalar_value(k, v) for k, v in scalars.items()], step)

    def write_images(self, step: int, images: Mapping[str, ArrayLike]) -> None:
        """Writes ``{name: batch [N, H, W, C] or image [H, W, C]}``, C = 1, 3 or 4.

        Pixels are uint8, or floats in [0, 1] (float32, float16, bfloat16). Each batch is one
        value of TensorBoard's images plugin (a slider over the N images).
        """
        self._write_values([summaries.images_value(k, v) for k, v in images.items()], step)

    def write_histograms(self, step: int, arrays: Mapping[str, ArrayLike],
                         num_buckets: int | Mapping[str, int] | None = None) -> None:
        """Writes a histogram of each array; ``num_buckets`` is one count, or one per name
        (default 30)."""
        def bins(name: str) -> int | None:
            if isinstance(num_buckets, Mapping):
                return num_buckets.get(name)
            return num_buckets

        self._write_values([summaries.histogram_value(k, v, bins(k))
                            for k, v in arrays.items()], step)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        """Writes ``{name: text}`` (Markdown in TensorBoard's text dashboard)."""
        self._write_values([summaries.text_value(k, v) for k, v in texts.items()], step)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Writes the run's hyper-parameters for TensorBoard's HPARAMS dashboard.

        Values are bools, numbers or strings; nested mappings (a ``ConfigDict``) are
        flattened to dotted names (``model.depth``). Call once per run.
        """
        self._write_values([summaries.hparams_value(hparams)], 0)

    def flush(self) -> None:
        """Makes what was written visible to readers (every write is flushed already)."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Closes the file; calling it again does nothing."""
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
