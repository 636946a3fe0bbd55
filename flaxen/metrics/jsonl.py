"""A JSON-lines metrics writer: one JSON object per line, readable with any tool.

Each call to :meth:`JsonlWriter.write` appends ``{"step": ..., "wall_time": ..., **metrics}``.
The file is opened in append mode, so a resumed run continues the same file. In a
multi-process run only process 0 writes (see ``all_processes``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from jax.typing import ArrayLike

from flaxen.errors import FlaxenError
from flaxen.metrics._process import writes_here


class MetricsFileError(FlaxenError):
    """A metric value that JSON cannot hold, or a malformed metrics file."""


def _to_json(name: str, value: Any) -> Any:
    if isinstance(value, str | bool | int | float) or value is None:
        return value
    arr = np.asarray(value)
    if arr.dtype.kind in "biuf":
        return arr.item() if arr.ndim == 0 else arr.tolist()
    raise MetricsFileError(f'metric "{name}": expected a number or an array of numbers, got '
                           f"{type(value).__name__} with dtype {arr.dtype}.")


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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # closed in close()

    def write(self, step: int, metrics: Mapping[str, ArrayLike | str | None]) -> None:
        """Writes ``metrics`` (numbers, NumPy or JAX scalars or arrays) at ``step``."""
        if self._closed:
            raise MetricsFileError(f"JsonlWriter for {self.path} is closed.")
        row = {"step": int(step), "wall_time": time.time()}
        row.update({k: _to_json(k, v) for k, v in metrics.items()})
        if self._file is None:  # not the writing process
            return
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def scalar(self, tag: str, value: ArrayLike, step: int) -> None:
        """``SummaryWriter``-style spelling: one metric at ``step``."""
        self.write(step, {tag: value})

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
    """Reads all rows back; raises ``MetricsFileError`` naming the bad line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise MetricsFileError(f"{path}:{i}: not a JSON object ({e}).") from e
    return rows
