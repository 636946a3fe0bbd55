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
  other ``ml_dtypes`` included), in flaxen's checksummed envelope or, with
  ``format="flax"``, as Flax writes them; files of Flax and of the pre-release are read
  too. Nothing is ever unpickled or executed: every dtype is checked against an
  allow-list, every size against the bytes actually present, and the memory a decode
  may use is bounded by the input size (``DECODE_OVERHEAD_FACTOR``). ``to_bytes`` /
  ``from_bytes`` combine both layers. The byte format lives in ``flaxen._byte_format``.

The byte format (version ``FORMAT_VERSION``) is described in ``docs/checkpoints.md``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from flaxen import _byte_format
from flaxen._byte_format import FORMAT_VERSION, MAX_DEPTH, Format  # noqa: F401
from flaxen._byte_format import is_key_array as is_key_array
from flaxen.errors import SerializationError
from flaxen.nn.base import Model
from flaxen.nn.collection import Collection
from flaxen.traverse_util import path_to_str

DECODE_OVERHEAD_FACTOR = 4
DECODE_OVERHEAD_FLOOR = 16 * 2**20
"""Decoding builds at most ``DECODE_OVERHEAD_FACTOR * len(data) + DECODE_OVERHEAD_FLOOR``
bytes of Python objects besides the data itself (a hostile file of tiny records is
refused instead). Raise them for a real file refused by this limit."""

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
    """The path being restored (``params/Dense_0/kernel``; ``""`` at the top), for the
    error messages of handlers. Spelled by ``traverse_util.path_to_str``."""
    return path_to_str(getattr(_path_stack, "parts", []))


def _where() -> str:
    return current_path() or "<root>"


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
            f'At "{_where()}": expected a dict (the state of a {type(target).__name__}), '
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
            f'At "{_where()}": the state dict keys do not match the target. Missing: '
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
            f'At "{_where()}": the {type(xs).__name__} has {len(xs)} entries but the '
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
            f'At "{_where()}": the state dict does not fit {ty.__name__}, whose fields '
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


def msgpack_serialize_parts(pytree: Any, format: Format = "flaxen") -> list[bytes]:
    """The bytes of ``msgpack_serialize(pytree, format)`` as a few pieces, to write without
    joining them.

    Raises:
      SerializationError: a value has no byte encoding (object dtype, custom class,
        non-str dict key).
    """
    return _byte_format.serialize_parts(pytree, format)


def msgpack_serialize(pytree: Any, format: Format = "flaxen") -> bytes:
    """Encodes a state dict (nested dicts/lists of arrays and scalars) as msgpack bytes.

    Args:
      pytree: a state dict (``to_state_dict`` output).
      format: ``"flaxen"`` (default): a msgpack map ``{'__flaxen_format__': FORMAT_VERSION,
        'tree': pytree, 'crc32': checksum}`` whose CRC-32 (4 bytes, big-endian, last in
        the data) covers every byte before it. ``"flax"``: the bare tree in the encoding of
        ``flax.serialization.msgpack_serialize`` (no envelope, no checksum; Flax's
        chunked layout above 1 GiB), for files that Flax's ``from_bytes`` /
        ``msgpack_restore`` / ``restore_checkpoint`` must read.

    Raises:
      SerializationError: a value has no byte encoding (object dtype, custom class,
        non-str dict key).
    """
    return b"".join(msgpack_serialize_parts(pytree, format))


def msgpack_restore(encoded_pytree: bytes | bytearray | memoryview) -> Any:
    """Decodes bytes written by ``msgpack_serialize`` into a state dict of numpy arrays.

    Arrays come back as read-only numpy arrays that share the input's memory. Files of
    Flax (``flax.serialization.to_bytes``, chunked arrays included), of the pre-release
    Flax and of every flaxen version are read too. Decoding builds at most
    ``DECODE_OVERHEAD_FACTOR * len(data) + DECODE_OVERHEAD_FLOOR`` bytes of objects
    besides the arrays' data, which stays in ``encoded_pytree``.

    Raises:
      SerializationError: the bytes are truncated, damaged or hostile (unknown dtype,
        sizes that do not match the data, nesting deeper than ``MAX_DEPTH``, too many
        objects for their size), or were written by a newer format version.
    """
    return _byte_format.restore(encoded_pytree, DECODE_OVERHEAD_FACTOR, DECODE_OVERHEAD_FLOOR)


def to_bytes(target: Any, format: Format = "flaxen") -> bytes:
    """``msgpack_serialize(to_state_dict(target), format)``: the bytes of any registered
    object. ``format="flax"`` gives a file that ``flax.serialization.from_bytes`` reads."""
    return msgpack_serialize(to_state_dict(target), format)


def from_bytes(target: Any, encoded_bytes: bytes) -> Any:
    """``from_state_dict(target, msgpack_restore(encoded_bytes))``.

    The structure must fit ``target``; shapes and dtypes are not compared here (use
    ``checkpoints.restore_checkpoint`` or ``checkpoints.restore_state`` for that check).
    """
    return from_state_dict(target, msgpack_restore(encoded_bytes))
