"""``jax.export`` support: Models and Collections as arguments and results of exported functions.

``jax.export`` stores the pytree structure of a function's inputs and outputs in the
serialized artifact. Custom pytree nodes need a registered (de)serializer for their static
data; for a ``Model`` that is the Module class, for a ``Collection`` its class and keys.

A Module class is written as its import path (``package.module:QualName``) plus the
keyword arguments pre-bound with ``Module.partial`` (when they are JSON values), and read back
by importing it. So the process that deserializes must be able to import the class: define it
at the top level of an importable module (or of the script that deserializes). A class that
cannot be found again that way is refused at export time with a ``SerializationError``.

To serve without flaxen at all, export a function of the params dict instead of a Model
(``jax.export.export(jax.jit(MyModule.call))(params, x)``): a plain dict needs no registration.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import jax

from flaxen.errors import SerializationError
from flaxen.nn.base import Model, Module
from flaxen.nn.cache import Cache
from flaxen.nn.collection import Collection

_SERVING_HINT = (
    "To serve without flaxen classes in the artifact, export a function of the params dict "
    "instead: `jax.export.export(jax.jit(MyModule.call))(params, x)`."
)


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_class(path: str) -> Any:
    module_name, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _encode(value: Any) -> Any:
    """JSON keeps lists but not tuples; tuples are tagged so ``partial`` gets them back
    (a list would not be hashable, so ``Module.partial`` would make a new class)."""
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_decode(v) for v in value["__tuple__"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _module_to_json(cls: type[Module]) -> dict[str, Any]:
    partial_kwargs = _encode(dict(cls._partial_kwargs))
    spec = {"class": _class_path(cls), "partial_kwargs": partial_kwargs,
            "default_name": cls._default_name}
    try:
        json.dumps(spec)
    except TypeError as e:
        raise SerializationError(
            f"jax.export: Model({cls.__name__}) has pre-bound keyword arguments "
            f"{sorted(cls._partial_kwargs)} that are not JSON values ({e}), so its class cannot be "
            f"written into the exported artifact. {_SERVING_HINT}"
        ) from None
    return spec


def _module_from_json(spec: dict[str, Any]) -> type[Module]:
    try:
        base = _import_class(spec["class"])
    except (ImportError, AttributeError) as e:
        raise SerializationError(
            f"jax.export: the exported function takes or returns a Model of class "
            f"`{spec['class']}`, which cannot be imported in this process ({e}). Import or "
            f"define that class before deserializing. {_SERVING_HINT}"
        ) from None
    if not (isinstance(base, type) and issubclass(base, Module)):
        raise SerializationError(
            f"jax.export: `{spec['class']}` is {base!r}, expected a flaxen Module class.")
    kwargs = _decode(spec["partial_kwargs"])
    name = spec["default_name"]
    if not kwargs and name == base._default_name:
        return base
    return base.partial(name=None if name == base._default_name else name, **kwargs)


def _serialize_model(aux: tuple[type[Module]]) -> bytes:
    (module,) = aux  # Model is a dataclass pytree: its aux data is the tuple of meta fields
    spec = _module_to_json(module)
    # Refuse now, not in the serving process, a class that cannot be found again.
    try:
        found = _module_from_json(spec)
    except SerializationError:
        found = None
    if found is not module:
        raise SerializationError(
            f"jax.export: Model({module.__name__}) cannot be exported with its class: "
            f"`{spec['class']}` does not lead back to this exact class (it is defined inside "
            f"a function, made dynamically, or a partial of a partial). Define the Module at "
            f"the top level of a module. {_SERVING_HINT}"
        )
    return json.dumps(spec).encode()


def _deserialize_model(data: bytes) -> tuple[type[Module]]:
    return (_module_from_json(json.loads(data)),)


def _serialize_collection(aux: tuple[Any, ...]) -> bytes:
    cls, keys, anchor = aux
    if anchor is not None:
        raise SerializationError(
            f"jax.export: a {cls.__name__} created inside a running module (anchored at "
            f"`{anchor.label()}`) cannot be exported. Create the Collection at the top level, "
            f"outside any module."
        )
    return json.dumps({"class": _class_path(cls), "keys": list(keys)}).encode()


def _deserialize_collection(data: bytes) -> tuple[Any, ...]:
    spec = json.loads(data)
    return (_import_class(spec["class"]), tuple(spec["keys"]), None)


jax.export.register_pytree_node_serialization(
    Model, serialized_name="flaxen.nn.Model",
    serialize_auxdata=_serialize_model, deserialize_auxdata=_deserialize_model)
for _cls in (Collection, Cache):
    jax.export.register_pytree_node_serialization(
        _cls, serialized_name=f"flaxen.nn.{_cls.__name__}",
        serialize_auxdata=_serialize_collection, deserialize_auxdata=_deserialize_collection)
