"""LoggingWriter, MultiWriter, create_default_writer and AsyncWriter; clu's interface."""

import importlib.util
import inspect
import logging
import threading
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import metrics
from flaxen.metrics.tensorboard import SummaryError


class Recorder:
    """A writer that records its calls; can be slowed down or made to fail."""

    def __init__(self, gate=None, fail_at=None):
        self.calls, self.gate, self.fail_at = [], gate, fail_at
        self.flushed = self.closed = 0
        self.threads = set()

    def _record(self, *call):
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait()
        if call[:2] == ("scalars", self.fail_at):
            raise RuntimeError(f"disk full at step {self.fail_at}")
        self.calls.append(call)

    def write_scalars(self, step, scalars):
        self._record("scalars", step, dict(scalars))

    def write_images(self, step, images):
        self._record("images", step, {k: np.shape(v) for k, v in images.items()})

    def write_histograms(self, step, arrays, num_buckets=None):
        self._record("histograms", step, num_buckets)

    def write_texts(self, step, texts):
        self._record("texts", step, dict(texts))

    def write_hparams(self, hparams):
        self._record("hparams", None, dict(hparams))

    def flush(self):
        self.flushed += 1

    def close(self):
        self.closed += 1


def test_default_writer_writes_tensorboard_jsonl_and_log_lines(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="flaxen.metrics")
    writer = metrics.create_default_writer(tmp_path)
    assert isinstance(writer, metrics.MetricWriter)
    writer.write_hparams({"lr": 0.5})
    for step in (1, 2):
        writer.write_scalars(step, {"loss": jnp.float32(1.0 / step)})
    writer.write_images(2, {"x": np.zeros((2, 4, 4, 3), np.float32)})
    writer.write_histograms(2, {"w": np.arange(10.0)})
    writer.write_texts(2, {"note": "hi"})
    writer.close()
    assert metrics.read_scalars(tmp_path) == {"loss": [(1, 1.0), (2, 0.5)]}
    rows = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r.get("loss")) for r in rows] == [(0, None), (1, 1.0), (2, 0.5), (2, None)]
    assert rows[-1]["note"] == "hi" and rows[0]["hparams"] == {"lr": 0.5}
    messages = [r.getMessage() for r in caplog.records]
    assert "[1] loss=1" in messages and "[2] loss=0.5" in messages
    assert "[2] image x: shape (2, 4, 4, 3)" in messages
    assert "[2] histogram w: 10 values in [0, 9], mean 4.5" in messages
    assert "hyper-parameters: lr=0.5" in messages


def test_just_logging_writes_no_files(tmp_path):
    writer = metrics.create_default_writer(tmp_path / "run", just_logging=True)
    writer.write_scalars(1, {"loss": 1.0})
    writer.close()
    assert not (tmp_path / "run").exists()


def test_multi_writer_closes_every_writer_then_raises():
    class Broken(Recorder):
        def close(self):
            raise OSError("cannot close")

    good = Recorder()
    multi = metrics.MultiWriter([Broken(), good])
    multi.write_texts(3, {"a": "b"})
    with pytest.raises(OSError, match="cannot close"):
        multi.close()
    assert good.closed == 1 and good.calls == [("texts", 3, {"a": "b"})]


def test_async_writer_keeps_order_and_flush_waits():
    gate = threading.Event()
    inner = Recorder(gate=gate)
    writer = metrics.AsyncWriter(inner, max_pending=64)
    for step in range(20):
        writer.write_scalars(step, {"loss": jnp.float32(step)})
        writer.write_images(step, {"x": jnp.zeros((1, 2, 2, 3))})
    writer.write_hparams({"lr": 0.1})
    assert inner.calls == []  # the calls returned while the background thread waits
    gate.set()
    writer.flush()
    assert inner.flushed == 1 and len(inner.calls) == 41
    expected = [c for s in range(20) for c in (("scalars", s, {"loss": s}),
                                               ("images", s, {"x": (1, 2, 2, 3)}))]
    assert inner.calls[:40] == expected and inner.calls[40] == ("hparams", None, {"lr": 0.1})
    assert isinstance(inner.calls[0][2]["loss"], np.ndarray)  # fetched on the caller's thread
    assert inner.threads == {"flaxen-AsyncWriter"}
    writer.close()
    assert inner.closed == 1
    with pytest.raises(SummaryError, match="closed"):
        writer.write_scalars(99, {"loss": 0.0})


def test_async_writer_raises_a_background_error_on_the_next_call():
    inner = Recorder(fail_at=3)
    writer = metrics.AsyncWriter(inner)
    for step in range(5):
        writer.write_scalars(step, {"loss": step})
    with pytest.raises(RuntimeError, match="disk full at step 3") as info:
        writer.flush()
    assert "write_scalars(3)" in "".join(getattr(info.value, "__notes__", []))
    assert [c[1] for c in inner.calls] == [0, 1, 2, 4]  # the calls after it still ran
    writer.write_scalars(5, {"loss": 5})  # the error was raised once
    writer.close()
    assert inner.calls[-1][1] == 5


def test_async_writer_over_a_summary_writer_reports_a_bad_image(tmp_path):
    writer = metrics.AsyncWriter(metrics.SummaryWriter(tmp_path))
    writer.write_images(1, {"bad": np.zeros((1, 4, 4, 2))})
    writer.write_scalars(2, {"loss": 0.5})
    with pytest.raises(SummaryError, match=r'image "bad"'):
        writer.close()
    assert metrics.read_scalars(tmp_path) == {"loss": [(2, 0.5)]}


# -- clu ---------------------------------------------------------------------------------------

def clu_interface():
    """clu's MetricWriter interface, loaded from its file: ``import clu.metric_writers`` needs
    TensorFlow, its interface module does not."""
    spec = importlib.util.find_spec("clu")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("clu is not installed (pip install clu; it is in the dev extra)")
    path = Path(spec.submodule_search_locations[0]) / "metric_writers" / "interface.py"
    module_spec = importlib.util.spec_from_file_location("clu_metric_writer_interface", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.MetricWriter


@pytest.mark.parametrize("cls", [metrics.SummaryWriter, metrics.JsonlWriter,
                                 metrics.LoggingWriter, metrics.MultiWriter, metrics.AsyncWriter])
def test_writers_have_clus_methods_and_parameters(cls):
    interface = clu_interface()
    for name in ["write_scalars", "write_images", "write_histograms", "write_texts",
                 "write_hparams", "flush", "close"]:
        assert name in interface.__abstractmethods__
        theirs = list(inspect.signature(getattr(interface, name)).parameters)
        ours = list(inspect.signature(getattr(cls, name)).parameters)
        assert ours == theirs, (cls.__name__, name)


def test_clus_own_writer_files_read_back(tmp_path):
    try:
        from clu import metric_writers
    except ImportError as e:
        pytest.skip(f"clu.metric_writers does not import here ({e}); it needs TensorFlow")
    writer = metric_writers.create_default_writer(str(tmp_path), asynchronous=False)
    writer.write_scalars(1, {"loss": 0.5})
    writer.close()
    assert metrics.read_scalars(tmp_path)["loss"] == [(1, 0.5)]
