"""A JSON-lines metrics writer: one JSON object per line, readable with any tool.

Each call to :meth:`JsonlWriter.write` appends ``{"step": ..., "wall_time": ..., **metrics}``.
The file is opened in append mode, so a resumed run continues the same file. In a
multi-process run only process 0 writes (see ``all_processes``).

Non-finite numbers: JSON has no NaN or infinity (Python's ``json`` writes the bare words
``NaN``/``Infinity``, which strict parsers, ``jq`` and JavaScript reject). So a NaN or an
infinity is written as ``null``, and the row gets a ``"_nonfinite"`` entry that says what each
``null`` was: ``{"step": 3, "loss": null, "_nonfinite": {"loss": "NaN"}}``; for an array, a
list of the same shape with ``null`` at the finite entries (a dict, for the hparams row).
Every JSON parser accepts the file; pandas reads the ``null`` as NaN; :func:`read_jsonl`
restores the exact values.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from flaxen.errors import FlaxenError
from flaxen.metrics._process import writes_here

NONFINITE_KEY = "_nonfinite"
_NAMES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class MetricsFileError(FlaxenError):
    """A metric value that JSON cannot hold, or a malformed metrics file."""


def _to_json(name: str, value: Any) -> Any:
    if isinstance(value, str | bool | int | float) or value is None:
        return value
    arr = np.asarray(value)
    if arr.dtype.kind in "biuf":
        return arr.item() if arr.ndim == 0 else arr.tolist()
    if arr.dtype.kind == "V":  # bfloat16 and the other ml_dtypes floats
        try:
            arr = arr.astype(np.float32)
        except (TypeError, ValueError):
            pass
        else:
            return arr.item() if arr.ndim == 0 else arr.tolist()
    raise MetricsFileError(f'metric "{name}": expected a number or an array of numbers, got '
                           f"{type(value).__name__} with dtype {arr.dtype}.")


def _split_nonfinite(value: Any) -> tuple[Any, Any]:
    """``(value with None for each NaN/inf, marker or None)``; the marker mirrors lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        pairs = [_split_nonfinite(v) for v in value]
        if any(m is not None for _, m in pairs):
            return [v for v, _ in pairs], [m for _, m in pairs]
    if isinstance(value, dict):  # the hparams row
        split = {k: _split_nonfinite(v) for k, v in value.items()}
        marks = {k: m for k, (_, m) in split.items() if m is not None}
        if marks:
            return {k: v for k, (v, _) in split.items()}, marks
    return value, None


def _restore(value: Any, marker: Any) -> Any:
    if isinstance(marker, str):
        return _NAMES[marker]
    if isinstance(marker, list) and isinstance(value, list):
        return [_restore(v, m) for v, m in zip(value, marker)]
    if isinstance(marker, dict) and isinstance(value, dict):
        return {k: _restore(v, marker.get(k)) for k, v in value.items()}
    return value


def encode_row(row: Mapping[str, Any]) -> str:
    """One row as a strict JSON line (non-finite numbers as ``null`` + ``_nonfinite``)."""
    out: dict[str, Any] = {}
    markers: dict[str, Any] = {}
    for key, value in row.items():
        out[key], marker = _split_nonfinite(value)
        if marker is not None:
            markers[key] = marker
    if markers:
        out[NONFINITE_KEY] = markers
    return json.dumps(out, allow_nan=False)


def decode_row(row: dict) -> dict:
    """Undoes :func:`encode_row`: ``null`` + ``_nonfinite`` back to NaN and infinities."""
    markers = row.pop(NONFINITE_KEY, None)
    if isinstance(markers, dict):
        for key, marker in markers.items():
            row[key] = _restore(row.get(key), marker)
    return row


class JsonlWriter:
    """Appends one JSON line of metrics per call.

    Args:
      path: the ``.jsonl`` file (its folder is created if needed).
      all_processes: write on every process. By default only process 0 of a multi-process
        run (``jax.process_index() == 0``) writes; elsewhere the writer is a no-op that
        creates no file, so a script run on every host writes one file, not one per host.
    """

    def __init__(self, path: str | os.PathLike, *, all_processes: bool = False):
        self.path = Path(path)
        self.active = writes_here(all_processes)
        self._closed = False
        self._file: TextIO | None = None
        if self.active:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")  # closed in close()
            except OSError as e:
                raise MetricsFileError(f"Cannot open {str(self.path)!r} (resolved: "
                                       f"{self.path.resolve()}) for appending: {e.strerror}."
                                       ) from e

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Writes ``metrics`` (numbers, strings, NumPy or JAX scalars or arrays) at ``step``."""
        if self._closed:
            raise MetricsFileError(f"JsonlWriter for {self.path} (resolved: "
                                   f"{self.path.resolve()}) is closed.")
        if NONFINITE_KEY in metrics:
            raise MetricsFileError(f'"{NONFINITE_KEY}" is reserved (it marks NaN and infinite '
                                   "values in the file); rename that metric.")
        self._append(step, {k: _to_json(k, v) for k, v in metrics.items()})

    def _append(self, step: int, values: dict[str, Any]) -> None:
        row = {"step": int(step), "wall_time": time.time(), **values}
        if self._file is None:  # not the writing process
            return
        self._file.write(encode_row(row) + "\n")
        self._file.flush()

    def scalar(self, tag: str, value: Any, step: int) -> None:
        """``SummaryWriter``-style spelling: one metric at ``step``."""
        self.write(step, {tag: value})

    # -- the MetricWriter API (clu.metric_writers) -----------------------------------------

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """One row with the scalars at ``step``."""
        self.write(step, scalars)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        """One row with the texts at ``step``."""
        self.write(step, texts)

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """Does nothing: JSON lines hold numbers and text (images go to TensorBoard)."""

    def write_histograms(self, step: int, arrays: Mapping[str, Any],
                         num_buckets: int | Mapping[str, int] | None = None) -> None:
        """Does nothing: histograms go to TensorBoard (``write`` stores a whole array)."""

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """One row ``{"step": 0, "hparams": {dotted name: value}}`` (nested mappings flattened)."""
        from flaxen.metrics.summaries import flatten_hparams

        if self._closed:
            raise MetricsFileError(f"JsonlWriter for {self.path} (resolved: "
                                   f"{self.path.resolve()}) is closed.")
        flat = {k: _to_json(k, v) if not isinstance(v, list | tuple) else repr(v)
                for k, v in flatten_hparams(hparams).items()}
        self._append(0, {"hparams": flat})

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Reads all rows back, NaN and infinities restored.

    Raises:
      MetricsFileError: a line that is not JSON (named by file and line number).
      FileNotFoundError: no such file (the message shows the path resolved).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No metrics file {str(path)!r} (resolved: {path.resolve()}).")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(decode_row(json.loads(line)))
            except json.JSONDecodeError as e:
                raise MetricsFileError(f"{path}:{i} (resolved: {path.resolve()}): not a JSON "
                                       f"object ({e}).") from e
    return rows
