"""Event files parsed back with an independent reader written here, against reference CRCs."""

import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from flaxen.metrics import protobuf as pb
from flaxen.metrics import tensorboard, tfrecord
from flaxen.metrics.tensorboard import SummaryError, SummaryWriter, read_events, read_scalars


def reference_crc32c(data: bytes) -> int:
    """Bit-by-bit CRC32C (no table), straight from the definition (poly 0x1EDC6F41, reflected)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def reference_mask(crc: int) -> int:
    rotated = ((crc >> 15) | (crc << 17)) % 2**32
    return (rotated + 0xA282EAD8) % 2**32


@pytest.mark.parametrize("data,expected", [
    (b"123456789", 0xE3069283),  # the standard CRC-32C check value
    (bytes(32), 0x8A9136AA),  # RFC 3720, B.4
    (b"\xff" * 32, 0x62A8AB43),  # RFC 3720, B.4
    (bytes(range(32)), 0x46DD794E),  # RFC 3720, B.4
])
def test_crc32c_known_vectors(data, expected):
    assert reference_crc32c(data) == expected
    assert tfrecord.crc32c(data) == expected


def test_masked_crc_matches_reference():
    for data in (b"", b"a", b"hello world", bytes(range(256)) * 3):
        assert tfrecord.masked_crc32c(data) == reference_mask(reference_crc32c(data))


@pytest.mark.parametrize("value,encoded", [
    (0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
    (-1, b"\xff" * 9 + b"\x01"),
])
def test_varint_known_encodings(value, encoded):
    assert pb.varint(value) == encoded
    assert pb.read_varint(encoded, 0)[0] == value % 2**64


def independent_records(path):
    """Reads TFRecord framing with struct and the reference CRC only."""
    with open(path, "rb") as f:
        data = f.read()
    pos, out = 0, []
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        (length_crc,) = struct.unpack_from("<I", data, pos + 8)
        assert length_crc == reference_mask(reference_crc32c(data[pos:pos + 8]))
        body = data[pos + 12:pos + 12 + length]
        (body_crc,) = struct.unpack_from("<I", data, pos + 12 + length)
        assert body_crc == reference_mask(reference_crc32c(body))
        out.append(body)
        pos += 16 + length
    assert pos == len(data)
    return out


def test_event_file_scalars_round_trip(tmp_path):
    with SummaryWriter(tmp_path) as w:
        w.scalar("loss", np.float32(0.5), step=1)
        w.scalar("loss", 0.25, step=2)
        w.scalar("acc", np.array([0.75]), step=2)
    files = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(files) == 1
    records = independent_records(files[0])
    assert len(records) == 4
    # First event: wall_time (field 1, fixed64) then file_version (field 3).
    first = records[0]
    assert first[0] == (1 << 3) | 1 and first[9:] == b"\x1a\x0dbrain.Event:2"
    # Second event, decoded by hand: step 1, one value with tag "loss" and simple_value 0.5.
    second = records[1]
    assert second[9:11] == b"\x10\x01"  # step = 1
    value = b"\x0a\x04loss" + b"\x15" + struct.pack("<f", 0.5)
    summary = b"\x0a" + bytes([len(value)]) + value
    assert second[11:] == b"\x2a" + bytes([len(summary)]) + summary
    assert read_scalars(tmp_path) == {"loss": [(1, 0.5), (2, 0.25)], "acc": [(2, 0.75)]}


def test_image_histogram_text(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    values = rng.normal(size=1000)
    with SummaryWriter(tmp_path) as w:
        w.image("rgb", img, step=3)
        w.image("grey", np.full((4, 4, 1), 0.5, np.float32), step=3)
        w.histogram("h", values, step=4, bins=10)
        w.text("note", "hello *world*", step=5)
        path = w.path
    events = list(read_events(path))
    assert len(independent_records(path)) == len(events) == 5
    rgb = events[1]["values"][0]["image"]
    assert (rgb["height"], rgb["width"], rgb["colorspace"]) == (5, 7, 3)
    pil = pytest.importorskip("PIL.Image")
    np.testing.assert_array_equal(np.asarray(pil.open(io.BytesIO(rgb["png"]))), img)
    grey = events[2]["values"][0]["image"]
    np.testing.assert_array_equal(np.asarray(pil.open(io.BytesIO(grey["png"]))),
                                  np.full((4, 4), 128, np.uint8))
    histo = events[3]["values"][0]["histo"]
    counts, edges = np.histogram(values, bins=10)
    np.testing.assert_array_equal(histo["bucket"], counts)
    np.testing.assert_allclose(histo["bucket_limit"], edges[1:])
    assert histo["num"] == 1000 and histo["min"] == values.min() and histo["max"] == values.max()
    np.testing.assert_allclose(histo["sum_squares"], np.sum(values**2))
    text = events[4]["values"][0]
    assert text["plugin_name"] == "text" and text["tensor"]["string_val"] == [b"hello *world*"]
    assert text["tensor"]["dtype"] == 7 and events[4]["step"] == 5


def test_events_parse_with_protobuf_reference(tmp_path):
    """Cross-check against Google's protobuf runtime with the real field numbers."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    if not hasattr(message_factory, "GetMessageClass"):
        pytest.skip("protobuf older than 4.21")

    f = descriptor_pb2.FileDescriptorProto(name="ev.proto", package="t", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto

    def msg(name, *fields):
        m = f.message_type.add(name=name)
        for fname, num, ftype, label, tname in fields:
            fd = m.field.add(name=fname, number=num, type=ftype, label=label)
            if tname:
                fd.type_name = ".t." + tname

    opt, rep = T.LABEL_OPTIONAL, T.LABEL_REPEATED
    msg("Image", ("height", 1, T.TYPE_INT32, opt, None), ("width", 2, T.TYPE_INT32, opt, None),
        ("colorspace", 3, T.TYPE_INT32, opt, None), ("png", 4, T.TYPE_BYTES, opt, None))
    msg("Histo", ("min", 1, T.TYPE_DOUBLE, opt, None), ("max", 2, T.TYPE_DOUBLE, opt, None),
        ("num", 3, T.TYPE_DOUBLE, opt, None), ("bucket_limit", 6, T.TYPE_DOUBLE, rep, None),
        ("bucket", 7, T.TYPE_DOUBLE, rep, None))
    msg("Value", ("tag", 1, T.TYPE_STRING, opt, None), ("simple_value", 2, T.TYPE_FLOAT, opt, None),
        ("image", 4, T.TYPE_MESSAGE, opt, "Image"), ("histo", 5, T.TYPE_MESSAGE, opt, "Histo"))
    msg("Summary", ("value", 1, T.TYPE_MESSAGE, rep, "Value"))
    msg("Event", ("wall_time", 1, T.TYPE_DOUBLE, opt, None), ("step", 2, T.TYPE_INT64, opt, None),
        ("file_version", 3, T.TYPE_STRING, opt, None),
        ("summary", 5, T.TYPE_MESSAGE, opt, "Summary"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    Event = message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))

    with SummaryWriter(tmp_path) as w:
        w.scalar("x", 1.5, step=7)
        w.histogram("h", [1.0, 2.0, 2.0, 3.0], step=8, bins=2)
        w.image("i", np.zeros((2, 3), np.uint8), step=9)
        path = w.path
    events = [Event.FromString(r) for r in independent_records(path)]
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 7 and events[1].summary.value[0].simple_value == 1.5
    assert list(events[2].summary.value[0].histo.bucket) == [1.0, 3.0]
    assert list(events[2].summary.value[0].histo.bucket_limit) == [2.0, 3.0]
    image = events[3].summary.value[0].image
    assert (image.height, image.width, image.colorspace) == (2, 3, 1)


def test_corrupt_and_truncated_files_raise(tmp_path):
    with SummaryWriter(tmp_path) as w:
        w.scalar("loss", 1.0, step=1)
        path = w.path
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad"
    data[-6] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(tfrecord.RecordError, match="data CRC"):
        list(read_events(bad))
    bad.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(tfrecord.RecordError, match="truncated"):
        list(read_events(bad))


def test_bad_inputs_give_clear_errors(tmp_path):
    w = SummaryWriter(tmp_path)
    with pytest.raises(SummaryError, match='scalar "s".*single number'):
        w.scalar("s", np.ones(3), step=0)
    with pytest.raises(SummaryError, match=r'image "i".*\(2, 2, 2\)'):
        w.image("i", np.zeros((2, 2, 2)), step=0)
    with pytest.raises(SummaryError, match="`str` or `bytes`"):
        w.text("t", 3, step=0)
    with pytest.raises(SummaryError, match="finite"):
        w.histogram("h", [np.nan], step=0)
    w.close()
    w.close()  # idempotent
    with pytest.raises(SummaryError, match="closed"):
        w.scalar("s", 1.0, step=1)


def test_png_encoder_against_pillow():
    pil = pytest.importorskip("PIL.Image")
    img = np.arange(60, dtype=np.uint8).reshape(6, 10)
    np.testing.assert_array_equal(np.asarray(pil.open(io.BytesIO(tensorboard.encode_png(img)))),
                                  img)


def test_errors_show_a_relative_path_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"'nope' \\(resolved: {tmp_path / 'nope'}\\)"):
        read_scalars("nope")
    with pytest.raises(FileNotFoundError, match=f"resolved: {tmp_path / 'no.tfevents'}"):
        list(read_events("no.tfevents"))
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(SummaryError, match=f"'file' \\(resolved: {tmp_path / 'file'}\\)"):
        SummaryWriter("file")
    w = SummaryWriter("tb")
    w.close()
    RecordError = tfrecord.RecordError
    cut = Path("tb") / w.path.name
    cut.write_bytes(cut.read_bytes()[:-3])  # a record cut short
    relative = os.path.relpath(cut)
    with pytest.raises(RecordError, match=f"{relative} \\(resolved: {tmp_path / relative}\\): "
                       "truncated record"):
        list(read_events(relative))
    with pytest.raises(SummaryError, match=f"resolved: {tmp_path / 'tb'}\\) is closed"):
        w.scalar("x", 1.0, 0)
