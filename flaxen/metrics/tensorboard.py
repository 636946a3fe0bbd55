"""A TensorBoard ``SummaryWriter`` that needs no TensorFlow.

It writes real event files: a TFRecord stream (see :mod:`flaxen.metrics.tfrecord`) of
``Event`` protocol-buffer messages encoded by hand (see :mod:`flaxen.metrics.protobuf`).
The messages used (field numbers from TensorFlow's ``event.proto`` and ``summary.proto``)::

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
              Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; Image image = 4;
              HistogramProto histo = 5; TensorProto tensor = 8; SummaryMetadata metadata = 9; }
    Image   { int32 height = 1; int32 width = 2; int32 colorspace = 3;
              bytes encoded_image_string = 4; }
    HistogramProto { double min = 1; max = 2; num = 3; sum = 4; sum_squares = 5;
                     repeated double bucket_limit = 6 [packed]; repeated double bucket = 7; }

Text goes through the text plugin: a scalar ``DT_STRING`` tensor with plugin name ``"text"``.

Example::

    writer = SummaryWriter('/tmp/run')
    writer.scalar('train_loss', 0.25, step=1)
    writer.close()
"""

from __future__ import annotations

import os
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from jax.typing import ArrayLike

from flaxen.errors import FlaxenError
from flaxen.metrics import protobuf as pb
from flaxen.metrics import tfrecord
from flaxen.metrics._process import writes_here

_DT_STRING = 7
_instance_counter = 0


class SummaryError(FlaxenError):
    """A value that cannot be written as the requested summary."""


def encode_png(image: np.ndarray) -> bytes:
    """Encodes a uint8 ``(H, W)`` (grey) or ``(H, W, 3)`` (RGB) array as PNG bytes."""
    height, width = image.shape[:2]
    color_type = 0 if image.ndim == 2 else 2
    rows = np.ascontiguousarray(image).reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _as_uint8_image(tag: str, image: ArrayLike) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise SummaryError(f'image "{tag}": expected shape [H, W], [H, W, 1] or [H, W, 3], '
                           f"got {arr.shape}.")
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise SummaryError(f'image "{tag}": expected uint8 or floats in [0, 1], got dtype '
                           f"{arr.dtype}. Cast with `.astype(np.uint8)` or divide by 255.")
    return np.clip(np.round(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


class SummaryWriter:
    """Writes scalars, images, histograms and text to a TensorBoard event file.

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
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{_instance_counter}")
        self.path = self.log_dir / name
        self._file: BinaryIO | None = None
        if self.active:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "wb")  # closed in close()
            self._write_event(pb.bytes_field(3, "brain.Event:2"), step=None)

    # -- plumbing --------------------------------------------------------------------------

    def _write_event(self, payload: bytes, step: int | None) -> None:
        if self._closed:
            raise SummaryError(f"SummaryWriter for {self.log_dir} is closed.")
        if self._file is None:  # not the writing process
            return
        event = pb.double_field(1, time.time())
        if step is not None:
            event += pb.int_field(2, int(step))
        tfrecord.write_record(self._file, event + payload)
        self._file.flush()

    def _write_value(self, value: bytes, step: int) -> None:
        summary = pb.bytes_field(1, value)  # Summary.value
        self._write_event(pb.bytes_field(5, summary), step)

    # -- public API ------------------------------------------------------------------------

    def scalar(self, tag: str, value: ArrayLike, step: int) -> None:
        """Writes one scalar (any array or number with a single element) at ``step``."""
        arr = np.asarray(value)
        if arr.size != 1:
            raise SummaryError(f'scalar "{tag}": expected a single number, got shape '
                               f"{arr.shape}.")
        self._write_value(pb.bytes_field(1, tag) + pb.float_field(2, float(arr.reshape(()))),
                          step)

    def image(self, tag: str, image: ArrayLike, step: int) -> None:
        """One image ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` (uint8, or floats in [0, 1])."""
        arr = _as_uint8_image(tag, image)
        msg = (pb.int_field(1, arr.shape[0]) + pb.int_field(2, arr.shape[1])
               + pb.int_field(3, 1 if arr.ndim == 2 else 3) + pb.bytes_field(4, encode_png(arr)))
        self._write_value(pb.bytes_field(1, tag) + pb.bytes_field(4, msg), step)

    def histogram(self, tag: str, values: ArrayLike, step: int, bins: int | None = None) -> None:
        """Writes a histogram of ``values`` (flattened) with ``bins`` buckets (default 30)."""
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if arr.size == 0 or not np.all(np.isfinite(arr)):
            raise SummaryError(f'histogram "{tag}": expected a non-empty array of finite '
                               f"values, got {arr.size} values.")
        counts, edges = np.histogram(arr, bins=bins or 30)
        msg = (pb.double_field(1, arr.min()) + pb.double_field(2, arr.max())
               + pb.double_field(3, arr.size) + pb.double_field(4, arr.sum())
               + pb.double_field(5, np.dot(arr, arr)) + pb.packed_doubles(6, edges[1:])
               + pb.packed_doubles(7, counts))
        self._write_value(pb.bytes_field(1, tag) + pb.bytes_field(5, msg), step)

    def text(self, tag: str, textdata: str | bytes, step: int) -> None:
        """Writes a string (rendered as Markdown by TensorBoard's text plugin)."""
        if not isinstance(textdata, str | bytes):
            raise SummaryError(f'text "{tag}": `textdata` should be of the type `str` or '
                               f"`bytes`, got {type(textdata).__name__}.")
        plugin = pb.bytes_field(1, pb.bytes_field(1, "text"))  # metadata.plugin_data.plugin_name
        tensor = pb.int_field(1, _DT_STRING) + pb.bytes_field(2, b"") + pb.bytes_field(8, textdata)
        self._write_value(pb.bytes_field(1, tag) + pb.bytes_field(8, tensor)
                          + pb.bytes_field(9, plugin), step)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        self._closed = True
        """Closes the file; calling it again does nothing."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- reading back ------------------------------------------------------------------------------


def _double(raw: bytes) -> float:
    return struct.unpack("<d", raw)[0]


def _decode_value(raw: bytes) -> dict:
    f = pb.decode(raw)
    out: dict = {"tag": f[1][0].decode("utf-8")}
    if 2 in f:
        out["simple_value"] = struct.unpack("<f", f[2][0])[0]
    if 4 in f:
        img = pb.decode(f[4][0])
        out["image"] = {"height": img[1][0], "width": img[2][0], "colorspace": img[3][0],
                        "png": img[4][0]}
    if 5 in f:
        h = pb.decode(f[5][0])

        def packed(n: int) -> np.ndarray:
            return np.frombuffer(b"".join(h.get(n, [])), dtype="<f8")

        out["histo"] = {"min": _double(h[1][0]), "max": _double(h[2][0]),
                        "num": _double(h[3][0]), "sum": _double(h[4][0]),
                        "sum_squares": _double(h[5][0]), "bucket_limit": packed(6),
                        "bucket": packed(7)}
    if 8 in f:
        t = pb.decode(f[8][0])
        out["tensor"] = {"dtype": t[1][0], "string_val": t.get(8, [])}
    if 9 in f:
        plugin = pb.decode(pb.decode(f[9][0])[1][0])
        out["plugin_name"] = plugin[1][0].decode("utf-8")
    return out


def read_events(path: str | os.PathLike) -> Iterator[dict]:
    """Reads an event file back: yields ``{'wall_time', 'step', 'file_version' | 'values'}``.

    Raises:
      tfrecord.RecordError: truncated file or CRC mismatch.
    """
    with open(path, "rb") as f:
        for record in tfrecord.read_records(f, str(path)):
            fields = pb.decode(record)
            event: dict = {"wall_time": _double(fields[1][0]), "step": fields.get(2, [0])[0]}
            if 3 in fields:
                event["file_version"] = fields[3][0].decode("utf-8")
            if 5 in fields:
                event["values"] = [_decode_value(v) for v in pb.decode(fields[5][0]).get(1, [])]
            yield event


def read_scalars(log_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """All scalars of all event files in ``log_dir``: ``{tag: [(step, value), ...]}``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        for event in read_events(path):
            for v in event.get("values", []):
                if "simple_value" in v:
                    out.setdefault(v["tag"], []).append((event["step"], v["simple_value"]))
    return out
