"""A tiny protocol-buffers wire-format encoder and a schema-less decoder.

Enough to write TensorBoard's ``Event`` and ``Summary`` messages by hand, without the
``protobuf`` package, and to read them back in tests. Wire types: 0 varint, 1 fixed64,
2 length-delimited, 5 fixed32. A message is the concatenation of its fields, each a key
``(field_number << 3) | wire_type`` as a varint followed by the value.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from flaxen.errors import FlaxenError

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


class ProtobufDecodeError(FlaxenError):
    """Bytes that are not a valid protocol-buffers message."""


def varint(value: int) -> bytes:
    """Base-128 varint, least significant group first; negative ints as 64-bit two's complement."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def int_field(field: int, value: int) -> bytes:
    """An int32/int64/enum/bool field (varint)."""
    return _key(field, VARINT) + varint(int(value))


def double_field(field: int, value: float) -> bytes:
    return _key(field, FIXED64) + struct.pack("<d", float(value))


def float_field(field: int, value: float) -> bytes:
    return _key(field, FIXED32) + struct.pack("<f", float(value))


def bytes_field(field: int, value: bytes | str) -> bytes:
    """A string, bytes or embedded-message field (length-delimited)."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    return _key(field, LENGTH_DELIMITED) + varint(len(value)) + value


def packed_doubles(field: int, values: Iterable[float]) -> bytes:
    """A packed ``repeated double`` field."""
    payload = b"".join(struct.pack("<d", float(v)) for v in values)
    return bytes_field(field, payload)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decodes a varint at ``pos``; returns ``(value, next_pos)``."""
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufDecodeError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufDecodeError("varint longer than 10 bytes")


def decode(data: bytes) -> dict[int, list]:
    """Splits a message into ``{field_number: [raw values in order]}``.

    Varints come back as ``int``, fixed64/fixed32 as their raw 8/4 ``bytes`` (unpack with
    ``struct``), length-delimited fields as ``bytes`` (decode again for an embedded message).
    """
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        field, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == VARINT:
            value, pos = read_varint(data, pos)
        elif wire_type in (FIXED64, FIXED32):
            size = 8 if wire_type == FIXED64 else 4
            chunk, pos = data[pos:pos + size], pos + size
            if len(chunk) < size:
                raise ProtobufDecodeError(f"truncated fixed field {field}")
            value = chunk
        elif wire_type == LENGTH_DELIMITED:
            size, pos = read_varint(data, pos)
            chunk, pos = data[pos:pos + size], pos + size
            if len(chunk) < size:
                raise ProtobufDecodeError(f"truncated length-delimited field {field}")
            value = chunk
        else:
            raise ProtobufDecodeError(f"unsupported wire type {wire_type} for field {field}")
        fields.setdefault(field, []).append(value)
    return fields
