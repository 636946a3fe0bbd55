"""Cutting a run's metrics back to the step it resumes from.

A run killed after its last checkpoint has logged steps that the resumed run logs again;
without this, ``metrics.jsonl`` and TensorBoard would hold those steps twice. Call these
right after restoring a checkpoint of step ``last_step``. Only process 0 of a multi-process
run changes files (the others return at once); every rewrite is atomic.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from flaxen.metrics import protobuf as pb
from flaxen.metrics import tfrecord
from flaxen.metrics._process import writes_here
from flaxen.metrics.jsonl import encode_row, read_jsonl


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def truncate_jsonl(path: str | os.PathLike, last_step: int) -> list[dict]:
    """Drops the rows of ``path`` whose ``step`` is above ``last_step``.

    Returns:
      The rows kept (``[]`` if the file does not exist, or on processes other than 0).
    """
    path = Path(path)
    if not writes_here(False) or not path.exists():
        return []
    rows = read_jsonl(path)
    kept = [r for r in rows if r.get("step", 0) <= last_step]
    if len(kept) != len(rows):
        _replace(path, "".join(encode_row(r) + "\n" for r in kept).encode("utf-8"))
    return kept


def truncate_events(log_dir: str | os.PathLike, last_step: int) -> int:
    """Drops the events above ``last_step`` from every TensorBoard event file in ``log_dir``.

    Events are copied byte for byte (scalars, images, histograms, text alike). A record cut
    short by a killed writer ends the file: the complete records before it are kept.

    Returns:
      How many events were removed (0 on processes other than 0).
    """
    if not writes_here(False):
        return 0
    removed = 0
    for name in sorted(glob.glob(os.path.join(os.fspath(log_dir), "events.out.tfevents.*"))):
        path = Path(name)
        kept, dropped = [], 0
        with open(path, "rb") as f:
            try:
                for record in tfrecord.read_records(f, name):
                    step = pb.decode(record).get(2, [0])[0]
                    if step <= last_step:
                        kept.append(record)
                    else:
                        dropped += 1
            except tfrecord.RecordError:
                dropped += 1  # the incomplete last record of a killed writer
        if dropped:
            _replace(path, b"".join(tfrecord.encode_record(r) for r in kept))
            removed += dropped
    return removed
