"""Metric writers write on process 0 only, unless ``all_processes=True``.

The real multi-process behaviour is checked end to end by the examples' two-process tests;
here the process index is faked so the rule itself is tested in one process.
"""

import pytest

from flaxen.metrics import JsonlWriter, SummaryWriter, _process, read_jsonl, read_scalars
from flaxen.metrics.jsonl import MetricsFileError
from flaxen.metrics.tensorboard import SummaryError


@pytest.fixture
def process_1(monkeypatch):
    monkeypatch.setattr(_process.jax, "process_index", lambda: 1)


def test_other_processes_write_nothing(tmp_path, process_1):
    with JsonlWriter(tmp_path / "m" / "metrics.jsonl") as j, SummaryWriter(tmp_path / "tb") as tb:
        assert not j.active and not tb.active
        j.write(1, {"loss": 0.5})
        tb.scalar("loss", 0.5, 1)
        tb.text("sample", "hello", 1)
        with pytest.raises(SummaryError, match="expected shape"):  # still checked everywhere
            tb.image("bad", [1.0, 2.0], 1)
    assert not (tmp_path / "m").exists() and not (tmp_path / "tb").exists()
    with pytest.raises(MetricsFileError, match="closed"):
        j.write(2, {"loss": 0.25})


def test_all_processes_opt_in(tmp_path, process_1):
    with JsonlWriter(tmp_path / "metrics.jsonl", all_processes=True) as j, \
            SummaryWriter(tmp_path / "tb", all_processes=True) as tb:
        j.write(1, {"loss": 0.5})
        tb.scalar("loss", 0.5, 1)
    assert [r["loss"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0.5]
    assert read_scalars(tmp_path / "tb")["loss"] == [(1, 0.5)]


def test_process_0_writes(tmp_path):
    with JsonlWriter(tmp_path / "metrics.jsonl") as j:
        assert j.active
        j.write(3, {"acc": 1.0})
    assert read_jsonl(tmp_path / "metrics.jsonl")[0]["step"] == 3


def test_truncate_history_to_the_restored_step(tmp_path):
    """A resumed run drops what a killed run logged after its last checkpoint."""
    from flaxen.metrics import truncate_events, truncate_jsonl

    with JsonlWriter(tmp_path / "m.jsonl") as j, SummaryWriter(tmp_path / "tb") as tb:
        for step in range(1, 6):
            j.write(step, {"loss": 1.0 / step})
            tb.scalar("loss", 1.0 / step, step)
        tb.text("note", "at 5", 5)
    with open(tb.path, "ab") as f:  # a killed writer's half record
        f.write(b"\x10\x00\x00")
    kept = truncate_jsonl(tmp_path / "m.jsonl", 3)
    assert [r["step"] for r in kept] == [1, 2, 3]
    assert [r["step"] for r in read_jsonl(tmp_path / "m.jsonl")] == [1, 2, 3]
    assert truncate_events(tmp_path / "tb", 3) == 4  # steps 4, 5, the text and the half record
    assert read_scalars(tmp_path / "tb")["loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert truncate_events(tmp_path / "tb", 3) == 0
    assert truncate_jsonl(tmp_path / "missing.jsonl", 3) == []
