"""The MetricWriter API (write_scalars, write_images, ...) of SummaryWriter, read back by flaxen
and by TensorBoard's own reader."""

import io

import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import metrics
from flaxen.metrics.tensorboard import SummaryError

PIL = pytest.importorskip("PIL.Image", reason="pillow decodes the PNGs (examples extra)")
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is not installed (it is in the dev extra: pip install -e '.[dev]')")


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(PIL.open(io.BytesIO(data)))


def write_all(log_dir, rgba, grey):
    with metrics.SummaryWriter(log_dir) as w:
        w.write_scalars(1, {"loss": jnp.float32(0.5), "lr": 0.125})
        w.write_images(2, {"rgba": rgba, "grey": grey})
        w.write_histograms(3, {"w": np.arange(100.0), "b": np.ones(4)}, num_buckets={"w": 5})
        w.write_texts(4, {"note": "**bold**"})
        w.write_hparams({"lr": 0.1, "model": {"depth": 3, "act": "relu"}, "bn": True})
        return w.path


def test_each_call_is_one_event_that_flaxen_and_tensorboard_read(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (2, 5, 7, 4), dtype=np.uint8)  # a batch of two RGBA images
    grey = jnp.asarray(rng.random((3, 4, 6, 1)), jnp.bfloat16)
    path = write_all(tmp_path, rgba, grey)

    events = list(metrics.read_events(path))[1:]
    assert [e["step"] for e in events] == [1, 2, 3, 4, 0]
    assert [v["tag"] for v in events[0]["values"]] == ["loss", "lr"]
    assert metrics.read_scalars(tmp_path) == {"loss": [(1, 0.5)], "lr": [(1, 0.125)]}

    acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    acc.Reload()
    assert acc.Tags()["scalars"] == ["loss", "lr"]
    assert sorted(acc.Tags()["histograms"]) == ["b", "w"]
    w_histo = acc.Histograms("w")[0].histogram_value
    counts, _ = np.histogram(np.arange(100.0), bins=5)
    assert list(w_histo.bucket) == list(counts) and w_histo.num == 100
    assert len(acc.Histograms("b")[0].histogram_value.bucket) == 30  # the default count

    # Image batches: the images plugin's string tensor [width, height, png...].
    strings = acc.Tensors("rgba")[0].tensor_proto.string_val
    assert strings[:2] == [b"7", b"5"] and len(strings) == 4
    for png, expected in zip(strings[2:], rgba):
        np.testing.assert_array_equal(decode_png(png), expected)
    grey_strings = acc.Tensors("grey")[0].tensor_proto.string_val
    expected = np.round(np.asarray(grey, np.float32)[..., 0] * 255).astype(np.uint8)
    for png, want in zip(grey_strings[2:], expected):
        np.testing.assert_array_equal(decode_png(png), want)
    assert acc.SummaryMetadata("rgba").plugin_data.plugin_name == "images"

    assert acc.Tensors("note")[0].tensor_proto.string_val == [b"**bold**"]


def test_hparams_parse_with_tensorboards_hparams_protos(tmp_path):
    plugin_data_pb2 = pytest.importorskip("tensorboard.plugins.hparams.plugin_data_pb2")
    hparams_pb = pytest.importorskip("tensorboard.plugins.hparams.summary_v2").hparams_pb
    write_all(tmp_path, np.zeros((1, 2, 2, 3), np.uint8), np.zeros((1, 2, 2, 1), np.float16))
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    meta = acc.SummaryMetadata("_hparams_/session_start_info")
    assert meta.plugin_data.plugin_name == "hparams"
    ours = plugin_data_pb2.HParamsPluginData.FromString(meta.plugin_data.content)
    hp = ours.session_start_info.hparams
    assert hp["lr"].number_value == 0.1 and hp["model.depth"].number_value == 3
    assert hp["model.act"].string_value == "relu" and hp["bn"].bool_value is True
    # TensorBoard's own encoder gives the same hyper-parameter values.
    theirs = plugin_data_pb2.HParamsPluginData.FromString(hparams_pb(
        {"lr": 0.1, "model.depth": 3, "model.act": "relu", "bn": True}
    ).value[0].metadata.plugin_data.content)
    assert dict(theirs.session_start_info.hparams) == dict(hp)


def test_image_dtypes_agree(tmp_path):
    pixels = np.random.default_rng(1).random((1, 3, 4, 3))
    with metrics.SummaryWriter(tmp_path) as w:
        w.write_images(0, {"f32": pixels.astype(np.float32), "f16": pixels.astype(np.float16),
                           "u8": np.round(pixels * 255).astype(np.uint8)})
        path = w.path
    values = list(metrics.read_events(path))[1]["values"]
    decoded = {v["tag"]: decode_png(v["tensor"]["string_val"][2]) for v in values}
    np.testing.assert_array_equal(decoded["f32"], decoded["u8"])
    # float16 keeps 11 bits: a pixel may round to the neighbouring level.
    assert np.abs(decoded["f16"].astype(int) - decoded["u8"]).max() <= 1


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 4, 4, 2)), r"C = 1 \(grey\), 3 \(RGB\) or 4 \(RGBA\); got shape \(2, 4, 4, 2\)"),
    (np.zeros((4, 4)), r"got shape \(4, 4\)"),
    (np.zeros((1, 2, 2, 3), np.int32), "dtype int32"),
    (np.full((1, 2, 2, 3), np.nan, np.float32), "NaN or infinite"),
])
def test_bad_images_are_clear_errors(tmp_path, bad, match):
    with metrics.SummaryWriter(tmp_path) as w, pytest.raises(SummaryError, match=match):
        w.write_images(0, {"x": bad})


def test_bad_hparams_and_scalars(tmp_path):
    with metrics.SummaryWriter(tmp_path) as w:
        with pytest.raises(SummaryError, match='hyper-parameter "f": expected a bool, number'):
            w.write_hparams({"f": object()})
        with pytest.raises(SummaryError, match='scalar "v": expected a single number'):
            w.write_scalars(0, {"v": np.ones(2)})
