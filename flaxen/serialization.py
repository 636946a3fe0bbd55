"""State dicts and a safe msgpack byte format for models, optimizers and any pytree.

Two layers, as in the pre-release Flax:

* **State dicts** (pure Python, no I/O). ``to_state_dict(x)`` turns a target into nested
  dicts with string keys and array leaves; ``from_state_dict(target, state)`` rebuilds an
  object shaped like ``target`` from such a dict. Handlers exist for ``dict``, ``list``,
  ``tuple``, namedtuples, every dataclass (its pytree fields; ``struct.dataclass``,
  ``Optimizer``), ``nn.Model`` (``{'params': ...}``) and ``nn.Collection`` (its
  ``as_dict()``). Register your own with ``register_serialization_state``.
* **Bytes**. ``msgpack_serialize`` / ``msgpack_restore`` write and read a state dict as
  msgpack with typed arrays (dtype name, shape, raw C-order bytes; bfloat16 and the
  other ``ml_dtypes`` included). Nothing is ever unpickled or executed: every dtype is
  checked against an allow-list and every size against the bytes actually present
  before anything is built. ``to_bytes`` / ``from_bytes`` combine both layers.

The byte format (version ``FORMAT_VERSION``) is described in ``docs/checkpoints.md``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import threading
import zlib
from collections.abc import Callable
from typing import Any

import jax
import ml_dtypes
import msgpack
import numpy as np

from flaxen.errors import SerializationError
from flaxen.nn.base import Model
from flaxen.nn.collection import Collection

FORMAT_VERSION = 1
"""Version of the byte format written by ``msgpack_serialize``."""

_FORMAT_KEY = "__flaxen_format__"
_TREE_KEY = "tree"
_CHUNKED_KEY = "__flaxen_chunked_array__"

_CRC_KEY = "crc32"
# The end of every file: the key "crc32", a bin-8 header of length 4, then the checksum.
_CRC_TRAILER = msgpack.packb(_CRC_KEY) + b"\xc4\x04"

# The start of every file: a 3-entry map whose first key is the format key.
_HEAD = b"\x83" + msgpack.packb(_FORMAT_KEY)

_EXT_NDARRAY = 1
_EXT_COMPLEX = 2
_EXT_NPSCALAR = 3

# Arrays larger than this are written as a list of chunks (msgpack's bin and ext types
# hold at most 4 GiB each). A module variable so that tests can make it small.
_MAX_CHUNK_BYTES = 2**30

# Restoring refuses data nested deeper than this (a hostile file cannot exhaust the stack).
MAX_DEPTH = 200

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


# -- State-dict layer ------------------------------------------------------------------

ToFn = Callable[[Any], dict[str, Any]]
FromFn = Callable[[Any, Any], Any]

_REGISTRY: dict[type, tuple[ToFn, FromFn]] = {}
_path_stack = threading.local()


def register_serialization_state(ty: type, ty_to_state_dict: ToFn, ty_from_state_dict: FromFn,
                                 override: bool = False) -> None:
    """Registers how instances of ``ty`` become state dicts and are rebuilt from them.

    Args:
      ty: the exact type (subclasses need their own registration).
      ty_to_state_dict: ``fn(x) -> dict[str, Any]``; call ``to_state_dict`` on children.
      ty_from_state_dict: ``fn(target, state) -> new_target``; call
        ``from_state_dict(child_target, child_state, name=key)`` on children.
      override: replace an existing registration instead of raising.

    Raises:
      ValueError: ``ty`` is already registered and ``override`` is False.
    """
    if ty in _REGISTRY and not override:
        raise ValueError(f'a serialization handler for "{ty.__name__}" is already registered')
    _REGISTRY[ty] = (ty_to_state_dict, ty_from_state_dict)


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _handler(x: Any) -> tuple[ToFn, FromFn] | None:
    ty = type(x)
    if ty in _REGISTRY:
        return _REGISTRY[ty]
    if _is_namedtuple(x):
        return _namedtuple_to_state_dict, _namedtuple_from_state_dict
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _dataclass_to_state_dict, _dataclass_from_state_dict
    return None


def current_path() -> str:
    """The path (``/a/b``) being restored; used in error messages of handlers."""
    parts = getattr(_path_stack, "parts", [])
    return "/" + "/".join(parts) if parts else "/"


def to_state_dict(target: Any) -> Any:
    """Returns the state dict of ``target``: nested ``dict[str, ...]`` with array leaves.

    Unregistered types (arrays, numbers, strings, None) are returned as they are.

    Raises:
      SerializationError: a handler returned something other than a dict with str keys.
    """
    handler = _handler(target)
    if handler is None:
        return target
    state = handler[0](target)
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise SerializationError(
            f"The state dict handler of {type(target).__name__} must return a dict with str "
            f"keys, got {type(state).__name__}"
            + (f" with keys {list(state)[:5]}" if isinstance(state, dict) else "") + "."
        )
    return state


def from_state_dict(target: Any, state: Any, name: str | None = None) -> Any:
    """Rebuilds an object like ``target`` (used as a template) from a state dict.

    Args:
      target: the template: its structure and types decide the result.
      state: a state dict as returned by ``to_state_dict`` or ``msgpack_restore``.
      name: the key of ``target`` in its parent, used for the path in error messages.

    Returns:
      A new object of the structure of ``target`` holding the values of ``state``. Leaves
      of unregistered types are replaced by the state's value.

    Raises:
      SerializationError: the state does not fit the target's structure; the message
        names the path.
    """
    parts = getattr(_path_stack, "parts", None)
    if parts is None:
        parts = _path_stack.parts = []
    if name is not None:
        parts.append(str(name))
    try:
        handler = _handler(target)
        if handler is None:
            return _restore_leaf(target, state)
        return handler[1](target, state)
    finally:
        if name is not None:
            parts.pop()


def is_key_array(x: Any) -> bool:
    """Whether ``x`` is a typed PRNG key array (``jax.random.key``); stored as its key data."""
    dtype = getattr(x, "dtype", None)
    try:
        return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    except TypeError:
        return False


def _restore_leaf(target: Any, state: Any) -> Any:
    """Puts a restored leaf where the target's leaf lives (same device placement)."""
    if isinstance(state, np.ndarray | np.generic):
        if isinstance(target, jax.Array) and not isinstance(target, jax.core.Tracer):
            if is_key_array(target):
                state = jax.random.wrap_key_data(jax.numpy.asarray(state),
                                                 impl=jax.random.key_impl(target))
            # Same placement, and same committedness: an uncommitted target (made by
            # jnp/init on the default device) gives an uncommitted array, so a jitted step
            # compiled for the target is not compiled again for the restored value.
            if getattr(target, "committed", True):
                return jax.device_put(state, target.sharding)
            return jax.device_put(state)
        if isinstance(target, jax.ShapeDtypeStruct):
            sharding = getattr(target, "sharding", None)
            return jax.device_put(state, sharding) if sharding is not None else jax.numpy.asarray(
                state)
    return state


def _expect_dict(target: Any, state: Any) -> dict[str, Any]:
    if not isinstance(state, dict):
        raise SerializationError(
            f'At "{current_path()}": expected a dict (the state of a {type(target).__name__}), '
            f"got {type(state).__name__}. The data does not belong to this target."
        )
    return state


def _dict_to_state_dict(xs: dict[Any, Any]) -> dict[str, Any]:
    out = {str(k): to_state_dict(v) for k, v in xs.items()}
    if len(out) != len(xs):
        raise SerializationError(
            f"The dict keys {sorted(map(repr, xs))[:10]} collide once turned into strings "
            "(state dict keys are str); rename them.")
    return out


def _dict_from_state_dict(xs: dict[Any, Any], state: Any) -> dict[Any, Any]:
    state = _expect_dict(xs, state)
    keys = {str(k): k for k in xs}
    missing = sorted(set(keys) - set(state))
    extra = sorted(set(state) - set(keys))
    if missing or extra:
        raise SerializationError(
            f'At "{current_path()}": the state dict keys do not match the target. Missing: '
            f"{missing}; unexpected: {extra}. For partial restores use "
            "`checkpoints.restore_checkpoint(..., strict=False)`."
        )
    return {keys[k]: from_state_dict(xs[keys[k]], state[k], name=k) for k in keys}


def _list_to_state_dict(xs: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    return {str(i): to_state_dict(v) for i, v in enumerate(xs)}


def _restore_items(xs: Any, state: Any) -> list[Any]:
    state = _expect_dict(xs, state)
    if set(state) != {str(i) for i in range(len(xs))}:
        raise SerializationError(
            f'At "{current_path()}": the {type(xs).__name__} has {len(xs)} entries but the '
            f"state dict has keys {sorted(state)[:10]}."
        )
    return [from_state_dict(v, state[str(i)], name=str(i)) for i, v in enumerate(xs)]


def _list_from_state_dict(xs: list[Any], state: Any) -> list[Any]:
    return _restore_items(xs, state)


def _tuple_from_state_dict(xs: tuple[Any, ...], state: Any) -> tuple[Any, ...]:
    return tuple(_restore_items(xs, state))


def _namedtuple_to_state_dict(nt: Any) -> dict[str, Any]:
    return {name: to_state_dict(getattr(nt, name)) for name in nt._fields}


def _namedtuple_from_state_dict(nt: Any, state: Any) -> Any:
    state = _expect_dict(nt, state)
    _check_fields(type(nt), list(nt._fields), state)
    return type(nt)(*[from_state_dict(getattr(nt, f), state[f], name=f) for f in nt._fields])


def _data_fields(x: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(x) if f.metadata.get("pytree_node", True)]


def _check_fields(ty: type, fields: list[str], state: dict[str, Any]) -> None:
    missing = [f for f in fields if f not in state]
    extra = sorted(set(state) - set(fields))
    if missing or extra:
        raise SerializationError(
            f'At "{current_path()}": the state dict does not fit {ty.__name__}, whose fields '
            f"are {fields}. Missing field(s): {missing}; unknown field(s): {extra}."
        )


def _dataclass_to_state_dict(x: Any) -> dict[str, Any]:
    return {f: to_state_dict(getattr(x, f)) for f in _data_fields(x)}


def _dataclass_from_state_dict(x: Any, state: Any) -> Any:
    state = _expect_dict(x, state)
    fields = _data_fields(x)
    _check_fields(type(x), fields, state)
    updates = {f: from_state_dict(getattr(x, f), state[f], name=f) for f in fields}
    return dataclasses.replace(x, **updates)


def _collection_to_state_dict(c: Collection) -> dict[str, Any]:
    return _dict_to_state_dict(c.as_dict())


def _collection_from_state_dict(c: Collection, state: Any) -> Collection:
    restored = _dict_from_state_dict(c.as_dict(), state)
    # Rebuild through the pytree so the template's class and anchor are kept.
    _, treedef = jax.tree_util.tree_flatten(c, is_leaf=lambda v: v is not c)
    return jax.tree_util.tree_unflatten(treedef, [restored[k] for k in sorted(restored)])


register_serialization_state(dict, _dict_to_state_dict, _dict_from_state_dict)
register_serialization_state(list, _list_to_state_dict, _list_from_state_dict)
register_serialization_state(tuple, _list_to_state_dict, _tuple_from_state_dict)
register_serialization_state(
    Model, lambda m: {"params": to_state_dict(m.params)},
    lambda m, s: m.replace(params=from_state_dict(m.params, _model_params(m, s), name="params")))
register_serialization_state(Collection, _collection_to_state_dict, _collection_from_state_dict)


def _model_params(m: Model, state: Any) -> Any:
    state = _expect_dict(m, state)
    _check_fields(Model, ["params"], state)
    return state["params"]


# -- msgpack layer ---------------------------------------------------------------------


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


def _prepare(x: Any, depth: int = 0) -> Any:
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
            out[k] = _prepare(v, depth + 1)
        return out
    if isinstance(x, list | tuple):
        return [_prepare(v, depth + 1) for v in x]
    if isinstance(x, jax.Array):
        x = _host_array(jax.random.key_data(x) if is_key_array(x) else x)
    if isinstance(x, np.ndarray | np.generic) and not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))  # files hold native (little-endian) bytes
    if isinstance(x, np.ndarray):
        _dtype_name(x.dtype)
        if x.nbytes > _MAX_CHUNK_BYTES:
            return _chunked(x)
    return x


def _chunked(x: np.ndarray) -> dict[str, Any]:
    flat = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    chunks = [flat[i:i + _MAX_CHUNK_BYTES].data  # a memoryview: packed as bin, no copy
              for i in range(0, flat.size, _MAX_CHUNK_BYTES)]
    return {_CHUNKED_KEY: [list(x.shape), _dtype_name(x.dtype)], "chunks": chunks}


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
        payload = msgpack.packb([_dtype_name(x.dtype), x.tobytes()])
        return msgpack.ExtType(_EXT_NPSCALAR, payload)
    if isinstance(x, complex):
        return msgpack.ExtType(_EXT_COMPLEX, msgpack.packb([x.real, x.imag]))
    raise SerializationError(
        f"Cannot serialize a value of type {type(x).__name__}: only dicts with str keys, "
        "lists, arrays, numpy scalars, None, bool, int, float, complex, str and bytes are "
        "supported. Register a state dict handler with `register_serialization_state`."
    )


def msgpack_serialize_parts(pytree: Any) -> list[bytes]:
    """The bytes of ``msgpack_serialize(pytree)`` as a few pieces, to write without joining.

    Raises:
      SerializationError: a value has no byte encoding (object dtype, custom class,
        non-str dict key).
    """
    prepared = _prepare(pytree)
    head = _HEAD + msgpack.packb(FORMAT_VERSION) + msgpack.packb(_TREE_KEY)
    try:
        body = msgpack.packb(prepared, default=_ext_pack, strict_types=True)
    except (OverflowError, TypeError, ValueError) as e:
        if isinstance(e, SerializationError):
            raise
        raise SerializationError(f"Cannot serialize the tree: {e}") from e
    crc = zlib.crc32(_CRC_TRAILER, zlib.crc32(body, zlib.crc32(head)))
    return [head, body, _CRC_TRAILER + crc.to_bytes(4, "big")]


def msgpack_serialize(pytree: Any) -> bytes:
    """Encodes a state dict (nested dicts/lists of arrays and scalars) as msgpack bytes.

    The result is a msgpack map ``{'__flaxen_format__': FORMAT_VERSION, 'tree': pytree,
    'crc32': checksum}``; the CRC-32 (4 bytes, big-endian, last in the data) covers every
    byte before it.

    Raises:
      SerializationError: a value has no byte encoding (object dtype, custom class,
        non-str dict key).
    """
    return b"".join(msgpack_serialize_parts(pytree))


def _verify_checksum(data: memoryview) -> bool:
    """Checks the trailing CRC-32 of flaxen data; False for plain (pre-release) msgpack."""
    if bytes(data[:len(_HEAD)]) != _HEAD:
        return False
    if (len(data) < len(_HEAD) + 12 or bytes(data[-12:-4]) != _CRC_TRAILER
            or zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "big")):
        raise SerializationError(
            "Damaged data: the file is truncated or some of its bytes changed after it was "
            "written (checksum mismatch; disk or transfer corruption). Restore an older "
            "checkpoint or a backup copy."
        )
    return True


def _check_int_list(what: str, xs: Any) -> list[int]:
    if not isinstance(xs, list | tuple) or not all(
            type(d) is int and d >= 0 for d in xs) or len(xs) > 64:
        raise SerializationError(f"Damaged data: an array {what} is {str(xs)[:80]}, expected a "
                                 "list of at most 64 non-negative ints.")
    return list(xs)


def _check_dtype(name: Any) -> np.dtype:
    if not isinstance(name, str) or name not in _ALLOWED_DTYPES:
        raise SerializationError(
            f"Damaged or unsupported data: array dtype {str(name)[:40]!r} is not one of "
            f"{sorted(_ALLOWED_DTYPES)}."
        )
    return _ALLOWED_DTYPES[name]


def _array_from(shape: Any, dtype_name: Any, data: Any) -> np.ndarray:
    shape = _check_int_list("shape", shape)
    dtype = _check_dtype(dtype_name)
    if not isinstance(data, bytes | memoryview):
        raise SerializationError("Damaged data: array contents are not bytes.")
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(data):
        raise SerializationError(
            f"Damaged data: an array of shape {tuple(shape)} and dtype {dtype.name} needs "
            f"{expected} bytes, but {len(data)} are present."
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


_BIN_HEADERS = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # msgpack bin 8/16/32: bytes of the length


def _array_record(payload: bytes) -> np.ndarray:
    """Decodes ``[shape, dtype name, bin]``; the array views ``payload`` (no copy)."""
    not_record = "Damaged data: an array record is not (shape, dtype, data)."
    unpacker = msgpack.Unpacker(io.BytesIO(payload), raw=False, read_size=256,
                                max_buffer_size=max(len(payload), 256))
    try:
        if unpacker.read_array_header() != 3:
            raise SerializationError(not_record)
        shape, dtype_name = unpacker.unpack(), unpacker.unpack()
    except (ValueError, TypeError, msgpack.UnpackException, StopIteration) as e:
        if isinstance(e, SerializationError):
            raise
        raise SerializationError(not_record) from e
    pos = unpacker.tell()
    size_bytes = _BIN_HEADERS.get(payload[pos] if pos < len(payload) else -1)
    if size_bytes is None:
        raise SerializationError(not_record)
    start = pos + 1 + size_bytes
    length = int.from_bytes(payload[pos + 1:start], "big")
    if start + length != len(payload):
        raise SerializationError("Damaged data: an array record's length does not match.")
    return _array_from(shape, dtype_name, memoryview(payload)[start:])


def _unpack_small(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)


def _ext_hook(code: int, payload: bytes) -> Any:
    if code == _EXT_NDARRAY:
        return _array_record(payload)
    if code == _EXT_NPSCALAR:
        parts = _unpack_small(payload)
        if not isinstance(parts, list) or len(parts) != 2:
            raise SerializationError("Damaged data: a scalar record is not (dtype, data).")
        return _array_from([], parts[0], parts[1])[()]
    if code == _EXT_COMPLEX:
        parts = _unpack_small(payload)
        if (not isinstance(parts, list) or len(parts) != 2
                or not all(isinstance(p, float | int) for p in parts)):
            raise SerializationError("Damaged data: a complex record is not (real, imag).")
        return complex(parts[0], parts[1])
    raise SerializationError(f"Damaged or unsupported data: unknown msgpack ext type {code}.")


def _finish(x: Any, depth: int = 0) -> Any:
    """Checks the depth of decoded data and joins chunked arrays."""
    if depth > MAX_DEPTH:
        raise SerializationError(f"Damaged data: nested deeper than {MAX_DEPTH} levels.")
    if isinstance(x, dict):
        if _CHUNKED_KEY in x:
            return _join_chunks(x)
        return {k: _finish(v, depth + 1) for k, v in x.items()}
    if isinstance(x, list):
        return [_finish(v, depth + 1) for v in x]
    return x


def _join_chunks(x: dict[str, Any]) -> np.ndarray:
    header, chunks = x.get(_CHUNKED_KEY), x.get("chunks")
    if (set(x) != {_CHUNKED_KEY, "chunks"} or not isinstance(header, list) or len(header) != 2
            or not isinstance(chunks, list) or not all(isinstance(c, bytes) for c in chunks)):
        raise SerializationError("Damaged data: a chunked array record is malformed.")
    return _array_from(header[0], header[1], b"".join(chunks))


def msgpack_restore(encoded_pytree: bytes) -> Any:
    """Decodes bytes written by ``msgpack_serialize`` into a state dict of numpy arrays.

    Arrays come back as read-only numpy arrays that share the input's memory. Data
    without the version envelope (plain msgpack state dicts, as the pre-release wrote)
    is accepted too.

    Raises:
      SerializationError: the bytes are truncated, damaged or hostile (unknown dtype,
        sizes that do not match the data, nesting deeper than ``MAX_DEPTH``), or were
        written by a newer format version.
    """
    if not isinstance(encoded_pytree, bytes | bytearray | memoryview):
        raise SerializationError(
            f"msgpack_restore expects bytes, got {type(encoded_pytree).__name__}.")
    checked = _verify_checksum(memoryview(encoded_pytree).cast("B"))
    try:
        tree = msgpack.unpackb(encoded_pytree, ext_hook=_ext_hook, raw=False,
                               strict_map_key=True, use_list=True)
    except SerializationError:
        raise
    except (msgpack.StackError, RecursionError) as e:
        raise SerializationError("Damaged or hostile data: nested too deeply.") from e
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise SerializationError(
            f"Damaged data: the bytes are not a valid flaxen msgpack file "
            f"({type(e).__name__}: {str(e)[:120]}). The file may be truncated or not a "
            "checkpoint."
        ) from e
    if isinstance(tree, dict) and _FORMAT_KEY in tree:
        version = tree[_FORMAT_KEY]
        if type(version) is not int:
            raise SerializationError("Damaged data: malformed format header.")
        if version > FORMAT_VERSION or version < 1:
            raise SerializationError(
                f"The data has format version {version}, but this flaxen reads versions "
                f"1 to {FORMAT_VERSION}. Upgrade flaxen to read it."
            )
        if not checked or set(tree) != {_FORMAT_KEY, _TREE_KEY, _CRC_KEY}:
            raise SerializationError("Damaged data: malformed format header.")
        tree = tree[_TREE_KEY]
    return _finish(tree)


def to_bytes(target: Any) -> bytes:
    """``msgpack_serialize(to_state_dict(target))``: the bytes of any registered object."""
    return msgpack_serialize(to_state_dict(target))


def from_bytes(target: Any, encoded_bytes: bytes) -> Any:
    """``from_state_dict(target, msgpack_restore(encoded_bytes))``.

    The structure must fit ``target``; shapes and dtypes are not compared here (use
    ``checkpoints.restore_checkpoint`` for that check).
    """
    return from_state_dict(target, msgpack_restore(encoded_bytes))

