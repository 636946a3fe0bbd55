"""TensorBoard ``Summary.Value`` messages, encoded by hand (field numbers from TensorFlow).

::

    Value   { string tag = 1; float simple_value = 2; Image image = 4;
              HistogramProto histo = 5; TensorProto tensor = 8; SummaryMetadata metadata = 9; }
    Image   { int32 height = 1; int32 width = 2; int32 colorspace = 3;
              bytes encoded_image_string = 4; }
    HistogramProto { double min = 1; max = 2; num = 3; sum = 4; sum_squares = 5;
                     repeated double bucket_limit = 6 [packed]; repeated double bucket = 7; }
    TensorProto { DataType dtype = 1; TensorShapeProto tensor_shape = 2;
                  bytes tensor_content = 4; repeated float float_val = 5;
                  repeated double double_val = 6; repeated int32 half_val = 13;
                  repeated bytes string_val = 8; }
    TensorShapeProto { repeated Dim dim = 2; }  Dim { int64 size = 1; }
    SummaryMetadata { PluginData plugin_data = 1; }  PluginData { string plugin_name = 1;
                                                                  bytes content = 2; }

Text, image batches and hyper-parameters go through TensorBoard plugins ("text", "images",
"hparams"): a tensor plus the plugin's name in the metadata, as TensorFlow 2 writes them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from flaxen.metrics import protobuf as pb
from flaxen.metrics.images import SummaryError, as_uint8_batch, as_uint8_image, encode_png

DT_FLOAT, DT_DOUBLE, DT_STRING, DT_BFLOAT16, DT_HALF = 1, 2, 7, 14, 19


def _metadata(plugin_name: str, content: bytes = b"") -> bytes:
    plugin_data = pb.bytes_field(1, plugin_name) + (pb.bytes_field(2, content) if content else b"")
    return pb.bytes_field(9, pb.bytes_field(1, plugin_data))


def _shape(*dims: int) -> bytes:
    return pb.bytes_field(2, b"".join(pb.bytes_field(2, pb.int_field(1, d)) for d in dims))


def scalar_value(tag: str, value: Any) -> bytes:
    """A scalar as ``simple_value`` (float32), as TensorBoard's scalar dashboard reads it."""
    arr = np.asarray(value)
    if arr.size != 1:
        raise SummaryError(f'scalar "{tag}": expected a single number, got shape {arr.shape}.')
    return pb.bytes_field(1, tag) + pb.float_field(2, float(arr.reshape(())))


def image_value(tag: str, image: Any) -> bytes:
    """One image as the ``Image`` message (PNG)."""
    arr = as_uint8_image(tag, image)
    channels = 1 if arr.ndim == 2 else arr.shape[-1]
    msg = (pb.int_field(1, arr.shape[0]) + pb.int_field(2, arr.shape[1])
           + pb.int_field(3, channels) + pb.bytes_field(4, encode_png(arr)))
    return pb.bytes_field(1, tag) + pb.bytes_field(4, msg)


def images_value(tag: str, images: Any) -> bytes:
    """A batch ``[N, H, W, C]`` in the images plugin's format: a string tensor of shape
    ``[2 + N]`` holding the width, the height and N PNGs (what ``tf.summary.image`` writes)."""
    batch = as_uint8_batch(tag, images)
    _, height, width, _ = batch.shape
    strings = [str(width).encode(), str(height).encode()] + [encode_png(im) for im in batch]
    tensor = (pb.int_field(1, DT_STRING) + _shape(len(strings))
              + b"".join(pb.bytes_field(8, s) for s in strings))
    return pb.bytes_field(1, tag) + pb.bytes_field(8, tensor) + _metadata("images")


def histogram_value(tag: str, values: Any, bins: int | None) -> bytes:
    """A histogram of ``values`` (flattened) with ``bins`` equal buckets (default 30)."""
    arr = np.asarray(values).astype(np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise SummaryError(f'histogram "{tag}": expected a non-empty array of finite values, '
                           f"got {arr.size} values ({int(np.sum(~np.isfinite(arr)))} not finite).")
    counts, edges = np.histogram(arr, bins=bins or 30)
    msg = (pb.double_field(1, arr.min()) + pb.double_field(2, arr.max())
           + pb.double_field(3, arr.size) + pb.double_field(4, arr.sum())
           + pb.double_field(5, np.dot(arr, arr)) + pb.packed_doubles(6, edges[1:])
           + pb.packed_doubles(7, counts))
    return pb.bytes_field(1, tag) + pb.bytes_field(5, msg)


def text_value(tag: str, text: str | bytes) -> bytes:
    """A string for the text plugin (rendered as Markdown): a scalar ``DT_STRING`` tensor."""
    if not isinstance(text, str | bytes):
        raise SummaryError(f'text "{tag}": `textdata` should be of the type `str` or `bytes`, '
                           f"got {type(text).__name__}.")
    tensor = pb.int_field(1, DT_STRING) + pb.bytes_field(2, b"") + pb.bytes_field(8, text)
    return pb.bytes_field(1, tag) + pb.bytes_field(8, tensor) + _metadata("text")


def flatten_hparams(hparams: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings (a ``ConfigDict``, a dict of dicts) flattened to ``{'a.b': value}``."""
    flat: dict[str, Any] = {}
    for key, value in hparams.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, name + "."))
        else:
            flat[name] = value
    return flat


def _hparam_value(name: str, value: Any) -> bytes:
    """A ``google.protobuf.Value``: number_value = 2, string_value = 3, bool_value = 4."""
    if isinstance(value, bool | np.bool_):
        return pb.int_field(4, bool(value))
    if isinstance(value, int | float | np.integer | np.floating):
        return pb.double_field(2, float(value))
    if isinstance(value, str):
        return pb.bytes_field(3, value)
    if value is None or isinstance(value, list | tuple):
        return pb.bytes_field(3, repr(value))  # shown as text; TensorBoard has no list type
    raise SummaryError(f'hyper-parameter "{name}": expected a bool, number or string, got '
                       f"{type(value).__name__}.")


def hparams_value(hparams: Mapping[str, Any]) -> bytes:
    """The hparams plugin's session-start record (``HParamsPluginData.session_start_info``).

    ``SessionStartInfo { map<string, Value> hparams = 1; string group_name = 4;
    double start_time_secs = 5; }``, inside ``HParamsPluginData { int32 version = 1;
    SessionStartInfo session_start_info = 3; }``.
    """
    flat = flatten_hparams(hparams)
    # A map field is a repeated entry message { key = 1; value = 2; }.
    entries = b"".join(
        pb.bytes_field(1, pb.bytes_field(1, k) + pb.bytes_field(2, _hparam_value(k, v)))
        for k, v in flat.items())
    group = hashlib.sha256(json.dumps(sorted(flat.items()), default=repr).encode()).hexdigest()
    start = entries + pb.bytes_field(4, group) + pb.double_field(5, time.time())
    tensor = pb.int_field(1, DT_FLOAT) + _shape(0)
    return (pb.bytes_field(1, "_hparams_/session_start_info") + pb.bytes_field(8, tensor)
            + _metadata("hparams", pb.bytes_field(3, start)))
