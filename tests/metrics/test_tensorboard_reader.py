"""Event files written by flaxen read back with TensorBoard's own reader (EventAccumulator).

TensorBoard is in the ``dev`` extra, so this runs in CI; elsewhere it is skipped with the reason.
"""

import numpy as np
import pytest

from flaxen import metrics

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is not installed (it is in the dev extra: pip install -e '.[dev]')")


def test_tensorboard_reads_what_flaxen_writes(tmp_path):
    writer = metrics.SummaryWriter(tmp_path)
    writer.scalar("loss", 0.5, 1)
    writer.scalar("loss", np.float32(0.25), 2)
    values = np.linspace(-1.0, 1.0, 101)
    writer.histogram("weights", values, 2, bins=10)
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    writer.image("sample", image, 2)
    writer.text("notes", "hello *world*", 3)
    writer.close()

    acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert tags["scalars"] == ["loss"] and tags["histograms"] == ["weights"]
    assert tags["images"] == ["sample"] and tags["tensors"] == ["notes"]
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 0.5), (2, 0.25)]
    histo = acc.Histograms("weights")[0].histogram_value
    assert (histo.num, histo.min, histo.max) == (101, -1.0, 1.0)
    assert sum(histo.bucket) == 101
    img = acc.Images("sample")[0]
    assert (img.step, img.width, img.height) == (2, 5, 4)
    PIL = pytest.importorskip("PIL.Image")
    import io

    decoded = np.asarray(PIL.open(io.BytesIO(img.encoded_image_string)))
    np.testing.assert_array_equal(decoded, image)
    text = acc.Tensors("notes")[0]
    assert text.step == 3 and text.tensor_proto.string_val == [b"hello *world*"]
