"""read_scalars reads scalars stored as tensors (TF2 and clu files), here written by
TensorBoard's own event writer and protos."""

import numpy as np
import pytest

from flaxen import metrics

pytest.importorskip("tensorboard", reason="tensorboard is in the dev extra")
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2  # noqa: E402
from tensorboard.plugins.scalar import summary_v2 as scalar_summary  # noqa: E402
from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402


def tensor_value(tag, array, plugin="scalars"):
    value = summary_pb2.Summary.Value(tag=tag, tensor=tensor_util.make_tensor_proto(array))
    if plugin:
        value.metadata.plugin_data.plugin_name = plugin
    return value


def test_tensor_scalars_written_by_tensorboard_read_back(tmp_path):
    writer = EventFileWriter(str(tmp_path))
    events = [
        (1, scalar_summary.scalar_pb("loss", 0.5).value[0]),  # float_val, plugin "scalars"
        (2, scalar_summary.scalar_pb("loss", np.float64(0.25)).value[0]),
        (2, tensor_value("acc", np.array(0.75, np.float64))),  # DT_DOUBLE
        (3, tensor_value("half", np.array(1.5, np.float16))),  # DT_HALF in half_val
        (3, tensor_value("acc", np.array(0.875, np.float32), plugin=None)),  # metadata once
        (4, tensor_value("vec", np.arange(3, dtype=np.float32))),  # not a scalar
        (4, tensor_value("text", np.array(b"hi", object), plugin="text")),
    ]
    for step, value in events:
        writer.add_event(event_pb2.Event(step=step, wall_time=1.0,
                                         summary=summary_pb2.Summary(value=[value])))
    # A tensor whose numbers are in tensor_content (as TF2's eager tensors are serialized).
    content = tensor_pb2.TensorProto(dtype=1, tensor_content=np.float32(2.5).tobytes())
    content_value = summary_pb2.Summary.Value(tag="content", tensor=content)
    content_value.metadata.plugin_data.plugin_name = "scalars"
    writer.add_event(event_pb2.Event(step=5, summary=summary_pb2.Summary(value=[content_value])))
    writer.close()

    assert metrics.read_scalars(tmp_path) == {
        "loss": [(1, 0.5), (2, 0.25)], "acc": [(2, 0.75), (3, 0.875)], "half": [(3, 1.5)],
        "content": [(5, 2.5)]}


def test_flaxen_simple_values_and_tensor_values_mix(tmp_path):
    with metrics.SummaryWriter(tmp_path) as w:
        w.write_scalars(1, {"loss": 1.0})
    writer = EventFileWriter(str(tmp_path))
    writer.add_event(event_pb2.Event(step=2, summary=scalar_summary.scalar_pb("loss", 0.5)))
    writer.close()
    assert sorted(metrics.read_scalars(tmp_path)["loss"]) == [(1, 1.0), (2, 0.5)]
