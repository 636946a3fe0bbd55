"""TFRecord framing with masked CRC32C, the container format of TensorBoard event files.

Each record on disk is::

    uint64 length (little-endian)
    uint32 masked_crc32c(the 8 length bytes)
    bytes  data[length]
    uint32 masked_crc32c(data)

CRC32C is the Castagnoli CRC (reflected polynomial ``0x82F63B78``); the mask rotates it right
by 15 bits and adds ``0xA282EAD8`` (modulo 2**32), as TensorFlow's ``crc32c::Mask`` does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from flaxen.errors import FlaxenError

_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8


class RecordError(FlaxenError):
    """A TFRecord file is truncated or a record fails its CRC."""


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing from ``crc``; returns an unsigned 32-bit int."""
    crc ^= 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The masked CRC32C stored in TFRecord files."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def encode_record(data: bytes) -> bytes:
    """One framed record: length, its CRC, the data and its CRC."""
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc32c(header)) + data
            + struct.pack("<I", masked_crc32c(data)))


def write_record(f: BinaryIO, data: bytes) -> None:
    f.write(encode_record(data))


def read_records(f: BinaryIO, path: str = "<file>") -> Iterator[bytes]:
    """Yields the data of each record, checking both CRCs.

    Raises:
      RecordError: a truncated record or a CRC mismatch (names the record's byte offset).
    """
    offset = 0
    while True:
        header = f.read(12)
        if not header:
            return
        if len(header) < 12:
            raise RecordError(f"{path}: truncated record header at byte {offset}.")
        (length,) = struct.unpack("<Q", header[:8])
        (length_crc,) = struct.unpack("<I", header[8:])
        if masked_crc32c(header[:8]) != length_crc:
            raise RecordError(f"{path}: the length CRC of the record at byte {offset} does not "
                              "match: the file is corrupt.")
        body = f.read(length + 4)
        if len(body) < length + 4:
            raise RecordError(f"{path}: truncated record at byte {offset} (expected {length} "
                              f"data bytes and a CRC, got {len(body)} bytes).")
        data = body[:length]
        (data_crc,) = struct.unpack("<I", body[length:])
        if masked_crc32c(data) != data_crc:
            raise RecordError(f"{path}: the data CRC of the record at byte {offset} does not "
                              "match: the file is corrupt.")
        yield data
        offset += 12 + length + 4
