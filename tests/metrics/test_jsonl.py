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


def strict_loads(line):
    """A JSON parser that refuses the non-standard NaN/Infinity words, as jq and JS do."""
    def refuse(word):
        raise ValueError(f"non-standard JSON constant {word}")

    return json.loads(line, parse_constant=refuse)


def test_non_finite_values_are_strict_json_and_restored(tmp_path):
    path = tmp_path / "m.jsonl"
    with JsonlWriter(path) as w:
        w.write(1, {"loss": float("nan"), "acc": 0.5, "per_class": np.array([1.0, np.inf, -np.inf]),
                    "grad": jnp.array(np.nan, jnp.bfloat16), "lr": jnp.bfloat16(0.5)})
        w.write_scalars(2, {"loss": 0.25})
    lines = path.read_text().splitlines()
    first = strict_loads(lines[0])  # every line parses without NaN/Infinity extensions
    assert first["loss"] is None and first["per_class"] == [1.0, None, None]
    assert first["_nonfinite"] == {"loss": "NaN", "per_class": [None, "Infinity", "-Infinity"],
                                   "grad": "NaN"}
    assert "_nonfinite" not in strict_loads(lines[1])
    rows = read_jsonl(path)
    assert np.isnan(rows[0]["loss"]) and np.isnan(rows[0]["grad"]) and rows[0]["acc"] == 0.5
    assert rows[0]["lr"] == 0.5  # bfloat16
    assert rows[0]["per_class"] == [1.0, np.inf, -np.inf] and "_nonfinite" not in rows[0]
    assert rows[1]["loss"] == 0.25


def test_truncate_keeps_non_finite_rows_strict(tmp_path):
    from flaxen.metrics import truncate_jsonl

    path = tmp_path / "m.jsonl"
    with JsonlWriter(path) as w:
        for step, loss in [(1, float("inf")), (2, 1.0), (3, 0.5)]:
            w.write(step, {"loss": loss})
    truncate_jsonl(path, 2)
    assert [strict_loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert read_jsonl(path)[0]["loss"] == np.inf


def test_metric_writer_methods_and_reserved_name(tmp_path):
    path = tmp_path / "m.jsonl"
    with JsonlWriter(path) as w:
        w.write_texts(1, {"sample": "to be"})
        w.write_images(1, {"ignored": np.zeros((1, 2, 2, 3))})  # images go to TensorBoard
        w.write_histograms(1, {"ignored": np.zeros(3)})
        w.write_hparams({"lr": 0.1, "model": {"depth": 2, "clip": float("inf")}})
        with pytest.raises(MetricsFileError, match='"_nonfinite" is reserved'):
            w.write(2, {"_nonfinite": 1.0})
    rows = read_jsonl(path)
    assert [r.get("sample") for r in rows] == ["to be", None]
    assert rows[1]["hparams"] == {"lr": 0.1, "model.depth": 2, "model.clip": np.inf}
    assert rows[1]["step"] == 0
    strict_loads(path.read_text().splitlines()[1])


def test_errors_show_a_relative_path_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        read_jsonl("runs/missing.jsonl")
    assert "'runs/missing.jsonl'" in str(info.value)
    assert f"resolved: {tmp_path / 'runs' / 'missing.jsonl'}" in str(info.value)
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(MetricsFileError) as info:
        JsonlWriter("blocker/m.jsonl")
    assert f"resolved: {tmp_path / 'blocker' / 'm.jsonl'}" in str(info.value)
