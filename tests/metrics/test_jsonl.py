import json

import jax.numpy as jnp
import numpy as np
import pytest

from flaxen.metrics import JsonlWriter, read_jsonl
from flaxen.metrics.jsonl import MetricsFileError


def test_rows_round_trip_and_append(tmp_path):
    path = tmp_path / "sub" / "metrics.jsonl"
    with JsonlWriter(path) as w:
        w.write(1, {"loss": jnp.float32(0.5), "acc": np.float64(0.25), "hist": np.arange(3)})
    with JsonlWriter(path) as w:  # a resumed run appends
        w.scalar("loss", 0.125, step=2)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["hist"] == [0, 1, 2]
    rows = read_jsonl(path)
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 0.5), (2, 0.125)]
    assert rows[0]["acc"] == 0.25 and "wall_time" in rows[0]


def test_bad_values_and_files(tmp_path):
    w = JsonlWriter(tmp_path / "m.jsonl")
    with pytest.raises(MetricsFileError, match='metric "x"'):
        w.write(0, {"x": object()})
    w.close()
    with pytest.raises(MetricsFileError, match="closed"):
        w.write(0, {"x": 1.0})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1}\n{oops\n')
    with pytest.raises(MetricsFileError, match="bad.jsonl:2"):
        read_jsonl(bad)
