"""The msgpack byte format of flaxen files (and the plain msgpack files Flax writes).

Writing: ``serialize_parts(state_dict, format)``. ``format="flaxen"`` wraps the tree in an
envelope ``{"__flaxen_format__": 1, "tree": ..., "crc32": <4 bytes>}`` whose CRC-32 covers
every byte before it; ``format="flax"`` writes the bare tree in the encoding of
``flax.serialization.msgpack_serialize``, so Flax's ``from_bytes`` reads it.

Reading: ``restore(data)`` reads both, plus files of the pre-release Flax and of older
flaxen versions. See ``docs/checkpoints.md`` ("File format") for the layout and the
guarantees on damaged and hostile input.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Literal

import jax
import ml_dtypes
import msgpack
import numpy as np

from flaxen import _msgpack_reader as reader
from flaxen.errors import SerializationError

FORMAT_VERSION = 1
"""Version of the flaxen byte format."""

Format = Literal["flaxen", "flax"]

_FORMAT_KEY = "__flaxen_format__"
_TREE_KEY = "tree"
_CRC_KEY = "crc32"
_CHUNKED_KEY = "__flaxen_chunked_array__"
_FLAX_CHUNKED_KEY = "__msgpack_chunked_array__"

# The end of every flaxen file: the key "crc32", a bin-8 header of length 4, the checksum.
_CRC_TRAILER = msgpack.packb(_CRC_KEY) + b"\xc4\x04"
# The start of every flaxen file: a 3-entry map whose first key is the format key.
_HEAD = b"\x83" + msgpack.packb(_FORMAT_KEY)

_EXT_NDARRAY = 1
_EXT_COMPLEX = 2
_EXT_NPSCALAR = 3

# Arrays larger than this are written in chunks (msgpack's bin and ext hold at most
# 4 GiB; Flax uses the same limit). A module variable so that tests can make it small.
_MAX_CHUNK_BYTES = 2**30

MAX_DEPTH = 200
"""Restoring refuses data nested deeper than this (a hostile file cannot exhaust the stack)."""

_MAX_DIM_PRODUCT = 2**62  # numpy cannot describe arrays beyond this many bytes

_ALLOWED_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name)
    for name in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64", "complex64", "complex128",
    )
}
for _name in ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3b11fnuz",
              "float8_e4m3fnuz", "float8_e5m2fnuz", "int4", "uint4"):
    if hasattr(ml_dtypes, _name):
        _ALLOWED_DTYPES[_name] = np.dtype(getattr(ml_dtypes, _name))
# NumPy's type strings ('<f4', '|u1', '>i8'), as the pre-release Flax wrote them.
_TYPESTRS: dict[str, np.dtype] = {}
for _dt in list(_ALLOWED_DTYPES.values())[:14]:  # NumPy's own dtypes, not ml_dtypes
    for _typed in (_dt.newbyteorder("<"), _dt.newbyteorder(">"), _dt.newbyteorder("=")):
        _TYPESTRS.setdefault(_typed.str, _typed)


# -- Writing ---------------------------------------------------------------------------


def _host_array(x: jax.Array) -> np.ndarray:
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _dtype_name(dtype: np.dtype) -> str:
    name = dtype.name
    if name not in _ALLOWED_DTYPES or _ALLOWED_DTYPES[name] != dtype:
        raise SerializationError(
            f"Arrays of dtype {dtype} cannot be serialized; supported dtypes are "
            f"{sorted(_ALLOWED_DTYPES)}. Object and structured dtypes are never written."
        )
    return name


def is_key_array(x: Any) -> bool:
    """Whether ``x`` is a typed PRNG key array (``jax.random.key``); stored as its key data."""
    dtype = getattr(x, "dtype", None)
    try:
        return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    except TypeError:
        return False


def _prepare(x: Any, fmt: Format, depth: int = 0) -> Any:
    """Turns a state dict into msgpack-ready values (arrays to host, big ones chunked)."""
    if depth > MAX_DEPTH:
        raise SerializationError(f"The tree is nested deeper than {MAX_DEPTH} levels.")
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            if not isinstance(k, str):
                raise SerializationError(
                    f"Only str dict keys can be serialized, got the key {k!r} of type "
                    f"{type(k).__name__}. Use `to_state_dict` first (it stringifies keys)."
                )
            out[k] = _prepare(v, fmt, depth + 1)
        return out
    if isinstance(x, list | tuple):
        return [_prepare(v, fmt, depth + 1) for v in x]
    if isinstance(x, jax.Array):
        x = _host_array(jax.random.key_data(x) if is_key_array(x) else x)
    if isinstance(x, np.ndarray | np.generic) and not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))  # files hold native (little-endian) bytes
    if isinstance(x, np.ndarray):
        _dtype_name(x.dtype)
        if x.nbytes > _MAX_CHUNK_BYTES:
            return _flax_chunked(x) if fmt == "flax" else _chunked(x)
    return x


def _chunked(x: np.ndarray) -> dict[str, Any]:
    flat = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    chunks = [flat[i:i + _MAX_CHUNK_BYTES].data  # a memoryview: packed as bin, no copy
              for i in range(0, flat.size, _MAX_CHUNK_BYTES)]
    return {_CHUNKED_KEY: [list(x.shape), _dtype_name(x.dtype)], "chunks": chunks}


def _flax_chunked(x: np.ndarray) -> dict[str, Any]:
    """Flax's layout: ``{marker: True, 'shape': {'0': d0, ...}, 'chunks': {'0': 1-D array}}``."""
    flat = np.ascontiguousarray(x).reshape(-1)
    n = max(1, _MAX_CHUNK_BYTES // x.dtype.itemsize)
    chunks = [flat[i:i + n] for i in range(0, flat.size, n)]
    return {_FLAX_CHUNKED_KEY: True, "shape": {str(i): d for i, d in enumerate(x.shape)},
            "chunks": {str(i): c for i, c in enumerate(chunks)}}


def _array_payload(x: np.ndarray) -> bytes:
    """msgpack ``[shape, dtype name, bin]``, built with a single copy of the array's bytes."""
    head = msgpack.packb(list(x.shape)) + msgpack.packb(_dtype_name(x.dtype))
    raw = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    # bin 32 header (0xc6 + big-endian length): valid msgpack for any length below 4 GiB.
    return b"".join([b"\x93", head, b"\xc6", raw.size.to_bytes(4, "big"), raw.data])


def _ext_pack(x: Any) -> msgpack.ExtType:
    if isinstance(x, np.ndarray):
        return msgpack.ExtType(_EXT_NDARRAY, _array_payload(x))
    if isinstance(x, np.generic):
        # (shape, dtype, bytes) with shape (): what Flax writes and reads.
        return msgpack.ExtType(_EXT_NPSCALAR, _array_payload(np.asarray(x)))
    if isinstance(x, complex):
        return msgpack.ExtType(_EXT_COMPLEX, msgpack.packb([x.real, x.imag]))
    raise SerializationError(
        f"Cannot serialize a value of type {type(x).__name__}: only dicts with str keys, "
        "lists, arrays, numpy scalars, None, bool, int, float, complex, str and bytes are "
        "supported. Register a state dict handler with `register_serialization_state`."
    )


def serialize_parts(tree: Any, format: Format = "flaxen") -> list[bytes]:
    """The bytes of ``tree`` (a state dict) as a few pieces, to write without joining."""
    if format not in ("flaxen", "flax"):
        raise SerializationError(f'format must be "flaxen" or "flax", got {format!r}.')
    prepared = _prepare(tree, format)
    try:
        body = msgpack.packb(prepared, default=_ext_pack, strict_types=True)
    except (OverflowError, TypeError, ValueError) as e:
        if isinstance(e, SerializationError):
            raise
        raise SerializationError(f"Cannot serialize the tree: {e}") from e
    if format == "flax":
        return [body]
    head = _HEAD + msgpack.packb(FORMAT_VERSION) + msgpack.packb(_TREE_KEY)
    crc = zlib.crc32(_CRC_TRAILER, zlib.crc32(body, zlib.crc32(head)))
    return [head, body, _CRC_TRAILER + crc.to_bytes(4, "big")]


# -- Reading ---------------------------------------------------------------------------


def is_flaxen_data(data: memoryview) -> bool:
    """Whether ``data`` claims to be a flaxen file: by its first OR its last bytes.

    Either end suffices, so damage confined to one end (a flipped bit in the header, a
    truncation) is still checked against the checksum instead of being read as an
    unchecked plain msgpack file.
    """
    return (bytes(data[:len(_HEAD)]) == _HEAD
            or (len(data) >= 12 and bytes(data[-12:-4]) == _CRC_TRAILER))


def verify_checksum(data: memoryview) -> None:
    """Raises ``SerializationError`` unless ``data`` ends with the CRC-32 of the rest."""
    if (len(data) < len(_HEAD) + 12 or bytes(data[-12:-4]) != _CRC_TRAILER
            or zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "big")):
        raise SerializationError(
            "Damaged data: the file is truncated or some of its bytes changed after it was "
            "written (checksum mismatch; disk or transfer corruption). Restore an older "
            "checkpoint or a backup copy."
        )


def _check_shape(shape: Any) -> list[int]:
    if (not isinstance(shape, list | tuple) or len(shape) > 64
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise SerializationError(f"Damaged data: an array shape is {str(shape)[:80]}, "
                                 "expected a list of at most 64 non-negative ints.")
    if math.prod(max(d, 1) for d in shape) >= _MAX_DIM_PRODUCT:
        raise SerializationError(f"Damaged or hostile data: the array shape "
                                 f"{str(tuple(shape))[:80]} is absurdly large.")
    return list(shape)


def _check_dtype(name: Any) -> np.dtype:
    if isinstance(name, bytes):  # msgpack raw strings
        name = name.decode("latin-1")
    if isinstance(name, str) and name in _ALLOWED_DTYPES:
        return _ALLOWED_DTYPES[name]
    if isinstance(name, str) and name in _TYPESTRS:
        return _TYPESTRS[name]
    raise SerializationError(
        f"Damaged or unsupported data: array dtype {str(name)[:40]!r} is not one of "
        f"{sorted(_ALLOWED_DTYPES)}.")


def _array_from(shape: Any, dtype_name: Any, data: Any, budget: reader.Budget) -> np.ndarray:
    shape = _check_shape(shape)
    dtype = _check_dtype(dtype_name)
    if not isinstance(data, bytes | memoryview):
        raise SerializationError("Damaged data: array contents are not bytes.")
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(data):
        raise SerializationError(
            f"Damaged data: an array of shape {tuple(shape)} and dtype {dtype.name} needs "
            f"{expected} bytes, but {len(data)} are present."
        )
    budget.charge(400)  # the ndarray and the memoryview it keeps (measured ~330 bytes)
    out = np.frombuffer(data, dtype=dtype).reshape(shape)
    if not dtype.isnative:  # '>f4' from an old big-endian writer: one copy, native order
        budget.charge(out.nbytes)
        out = out.astype(dtype.newbyteorder("="))
    return out


def _array_record(payload: memoryview, budget: reader.Budget) -> np.ndarray:
    """Decodes ``[shape, dtype, bin]``; the array views ``payload`` (no copy)."""
    not_record = "Damaged data: an array record is not (shape, dtype, data)."
    sub = reader.Reader(payload, budget, _no_ext, max_depth=3)
    try:
        if sub.take(1)[0] != 0x93:
            raise SerializationError(not_record)
        shape, dtype_name = sub.read(1), sub.read(1)
        width = {0xC4: 1, 0xC5: 2, 0xC6: 4}.get(sub.take(1)[0])
        if width is None:
            raise SerializationError(not_record)
        data = sub.take(int.from_bytes(sub.take(width), "big"))
    except SerializationError as e:
        raise SerializationError(f"{not_record} ({e})") from e
    if not sub.at_end():
        raise SerializationError("Damaged data: an array record's length does not match.")
    return _array_from(shape, dtype_name, data, budget)


def _no_ext(code: int, payload: memoryview, budget: reader.Budget) -> Any:
    raise SerializationError("Damaged data: an ext record nested inside an array record.")


def _ext_hook(code: int, payload: memoryview, budget: reader.Budget) -> Any:
    if code == _EXT_NDARRAY:
        return _array_record(payload, budget)
    if code == _EXT_NPSCALAR:
        if len(payload) and payload[0] == 0x93:  # (shape, dtype, bytes): Flax, flaxen >= 0.2
            arr = _array_record(payload, budget)
            if arr.shape != ():
                raise SerializationError("Damaged data: a numpy scalar record has shape "
                                         f"{arr.shape}, expected ().")
            return arr[()]
        parts = reader.decode(payload, budget, _no_ext, max_depth=2)  # (dtype, bytes)
        if not isinstance(parts, list) or len(parts) != 2:
            raise SerializationError("Damaged data: a scalar record is not (dtype, data).")
        return _array_from([], parts[0], parts[1], budget)[()]
    if code == _EXT_COMPLEX:
        parts = reader.decode(payload, budget, _no_ext, max_depth=2)
        if (not isinstance(parts, list) or len(parts) != 2
                or not all(type(p) in (float, int) for p in parts)):
            raise SerializationError("Damaged data: a complex record is not (real, imag).")
        return complex(parts[0], parts[1])
    raise SerializationError(f"Damaged or unsupported data: unknown msgpack ext type {code}.")


def _join_flaxen_chunks(x: dict[str, Any], budget: reader.Budget) -> np.ndarray:
    header, chunks = x.get(_CHUNKED_KEY), x.get("chunks")
    if (set(x) != {_CHUNKED_KEY, "chunks"} or not isinstance(header, list) or len(header) != 2
            or not isinstance(chunks, list) or not all(isinstance(c, bytes) for c in chunks)):
        raise SerializationError("Damaged data: a chunked array record is malformed.")
    shape, dtype = _check_shape(header[0]), _check_dtype(header[1])
    total = sum(len(c) for c in chunks)
    if total != math.prod(shape) * dtype.itemsize:
        raise SerializationError(
            f"Damaged data: a chunked array of shape {tuple(shape)} and dtype {dtype.name} "
            f"needs {math.prod(shape) * dtype.itemsize} bytes, but {total} are present.")
    budget.charge(total)
    return _array_from(shape, header[1], b"".join(chunks), budget)


def _join_flax_chunks(x: dict[str, Any], budget: reader.Budget) -> np.ndarray:
    shape_d, chunks_d = x.get("shape"), x.get("chunks")
    malformed = SerializationError("Damaged data: a Flax chunked array record is malformed.")
    if set(x) != {_FLAX_CHUNKED_KEY, "shape", "chunks"} or not isinstance(shape_d, dict) \
            or not isinstance(chunks_d, dict):
        raise malformed
    if set(shape_d) != {str(i) for i in range(len(shape_d))} \
            or set(chunks_d) != {str(i) for i in range(len(chunks_d))} or not chunks_d:
        raise malformed
    shape = _check_shape([shape_d[str(i)] for i in range(len(shape_d))])
    chunks = [chunks_d[str(i)] for i in range(len(chunks_d))]
    if not all(isinstance(c, np.ndarray) and c.ndim == 1 and c.dtype == chunks[0].dtype
               for c in chunks):
        raise malformed
    total = sum(c.size for c in chunks)
    if total != math.prod(shape):
        raise SerializationError(
            f"Damaged data: a Flax chunked array of shape {tuple(shape)} holds {total} "
            "elements.")
    budget.charge(total * chunks[0].dtype.itemsize)
    return np.concatenate(chunks).reshape(shape)


def _map_hook(x: dict[str, Any], budget: reader.Budget) -> Any:
    if _CHUNKED_KEY in x:
        return _join_flaxen_chunks(x, budget)
    if _FLAX_CHUNKED_KEY in x:
        return _join_flax_chunks(x, budget)
    return x


def restore(data: bytes | bytearray | memoryview, overhead_factor: float = 4,
            overhead_floor: int = 16 * 2**20) -> Any:
    """Decodes a flaxen, Flax or pre-release file into a state dict of numpy arrays.

    Arrays are read-only numpy arrays viewing ``data``. A flaxen file (recognised by its
    first or last bytes) must pass its checksum before anything is decoded. Decoding
    builds at most ``overhead_factor * len(data) + overhead_floor`` bytes of objects.

    Raises:
      SerializationError: the bytes are truncated, damaged or hostile, or were written by
        a newer format version.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SerializationError(f"msgpack_restore expects bytes, got {type(data).__name__}.")
    view = memoryview(data).cast("B")
    checked = is_flaxen_data(view)
    if checked:
        verify_checksum(view)
    budget = reader.Budget(int(overhead_factor * len(view) + overhead_floor))
    try:
        tree = reader.decode(view, budget, _ext_hook, _map_hook, MAX_DEPTH)
    except RecursionError as e:
        raise SerializationError("Damaged or hostile data: nested too deeply.") from e
    if isinstance(tree, dict) and _FORMAT_KEY in tree:
        version = tree[_FORMAT_KEY]
        if not checked or type(version) is not int or list(tree) != [
                _FORMAT_KEY, _TREE_KEY, _CRC_KEY]:
            raise SerializationError("Damaged data: malformed format header.")
        if version > FORMAT_VERSION or version < 1:
            raise SerializationError(
                f"The data has format version {version}, but this flaxen reads versions "
                f"1 to {FORMAT_VERSION}. Upgrade flaxen to read it."
            )
        return tree[_TREE_KEY]
    head = bytes(view[:24])
    if checked or b"__flaxen" in head or b"_format__" in head or (
            isinstance(tree, dict) and len(tree) == 3 and list(tree)[1:2] == [_TREE_KEY]):
        # A flaxen envelope whose first and last bytes are both damaged.
        raise SerializationError("Damaged data: malformed format header (the file's first "
                                 "and last bytes are damaged).")
    return tree
