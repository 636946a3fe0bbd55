"""Reading TensorBoard event files back, without TensorBoard or TensorFlow.

Scalars come in two forms: ``simple_value`` (flaxen, TF1, PyTorch) and a one-element float
tensor with plugin name ``"scalars"`` (``tf.summary.scalar`` in TF2, clu); both are read.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from flaxen.metrics import protobuf as pb
from flaxen.metrics import tfrecord
from flaxen.metrics.summaries import DT_BFLOAT16, DT_DOUBLE, DT_FLOAT, DT_HALF


def _double(raw: bytes) -> float:
    return struct.unpack("<d", raw)[0]


def _varints(chunks: list) -> list[int]:
    """A repeated int32 field: packed (one bytes chunk of varints) or not (ints)."""
    out: list[int] = []
    for chunk in chunks:
        if isinstance(chunk, int):
            out.append(chunk)
            continue
        pos = 0
        while pos < len(chunk):
            value, pos = pb.read_varint(chunk, pos)
            out.append(value)
    return out


def _tensor_numbers(t: dict[int, list]) -> np.ndarray | None:
    """The values of a float/double/half/bfloat16 TensorProto as float64, else None."""
    dtype = t.get(1, [0])[0]
    content = b"".join(t.get(4, []))
    if dtype == DT_FLOAT:
        raw = content or b"".join(t.get(5, []))  # packed or not, float_val is 4-byte chunks
        return np.frombuffer(raw, "<f4").astype(np.float64)
    if dtype == DT_DOUBLE:
        return np.frombuffer(content or b"".join(t.get(6, [])), "<f8").copy()
    if dtype in (DT_HALF, DT_BFLOAT16):
        if content:
            bits = np.frombuffer(content, "<u2")
        else:  # half_val holds the 16 bits of each value in an int32
            bits = np.asarray(_varints(t.get(13, [])), np.uint32).astype(np.uint16)
        if dtype == DT_HALF:
            return bits.view(np.float16).astype(np.float64)
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return None


def _plugin_name(metadata: bytes) -> str | None:
    plugin_data = pb.decode(metadata).get(1)
    if not plugin_data:
        return None
    name = pb.decode(plugin_data[0]).get(1)
    return name[0].decode("utf-8") if name else None


def _decode_value(raw: bytes) -> dict:
    f = pb.decode(raw)
    out: dict = {"tag": f[1][0].decode("utf-8") if 1 in f else ""}
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
        out["tensor"] = {"dtype": t.get(1, [0])[0], "string_val": t.get(8, []),
                         "values": _tensor_numbers(t)}
    if 9 in f:
        name = _plugin_name(f[9][0])
        if name is not None:
            out["plugin_name"] = name
    return out


def read_events(path: str | os.PathLike) -> Iterator[dict]:
    """Reads an event file back: yields ``{'wall_time', 'step', 'file_version' | 'values'}``.

    Each value is a dict with ``tag`` and, as present, ``simple_value``, ``image``,
    ``histo``, ``tensor`` (``dtype``, ``string_val``, and ``values``: the numbers of a float
    tensor as float64, else None) and ``plugin_name``.

    Raises:
      tfrecord.RecordError: truncated file or CRC mismatch.
      FileNotFoundError: no such file (the message shows the path resolved).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No event file {str(path)!r} (resolved: {path.resolve()}).")
    with open(path, "rb") as f:
        for record in tfrecord.read_records(f, str(path)):
            fields = pb.decode(record)
            # proto3 leaves out fields at their default (a wall_time or step of 0).
            event: dict = {"wall_time": _double(fields[1][0]) if 1 in fields else 0.0,
                           "step": fields.get(2, [0])[0]}
            if 3 in fields:
                event["file_version"] = fields[3][0].decode("utf-8")
            if 5 in fields:
                event["values"] = [_decode_value(v) for v in pb.decode(fields[5][0]).get(1, [])]
            yield event


def scalar_of(value: dict, plugin_name: str | None = None) -> float | None:
    """The number of a scalar value: its ``simple_value``, or a one-element float tensor
    whose plugin is ``"scalars"``; else None.

    ``plugin_name`` is the plugin named by an earlier value of the same tag, for a value that
    names none (writers may put the metadata only in a tag's first value); a tensor that no
    value of its tag gives a plugin counts as a scalar.
    """
    if "simple_value" in value:
        return value["simple_value"]
    tensor = value.get("tensor")
    if tensor is None or value.get("plugin_name", plugin_name or "scalars") != "scalars":
        return None
    numbers = tensor["values"]
    if numbers is None or numbers.size != 1:
        return None
    return float(numbers[0])


def read_scalars(log_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """All scalars of all event files in ``log_dir``: ``{tag: [(step, value), ...]}``.

    Reads both forms of a scalar (see :func:`scalar_of`), so files written by TensorFlow 2,
    clu or PyTorch read like flaxen's own.

    Raises:
      FileNotFoundError: ``log_dir`` is not a folder (the message shows it resolved).
    """
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise FileNotFoundError(f"No TensorBoard folder {str(log_dir)!r} (resolved: "
                                f"{log_dir.resolve()}).")
    out: dict[str, list[tuple[int, float]]] = {}
    plugins: dict[str, str] = {}  # tag -> the plugin its first value named
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in read_events(path):
            for v in event.get("values", []):
                plugins.setdefault(v["tag"], v.get("plugin_name", ""))
                number = scalar_of(v, plugins[v["tag"]])
                if number is not None:
                    out.setdefault(v["tag"], []).append((event["step"], number))
    return out
