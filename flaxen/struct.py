"""Frozen dataclasses that are JAX pytrees.

``@struct.dataclass`` makes a frozen dataclass whose fields are pytree children, except
those declared with ``field(pytree_node=False)``, which are static metadata (hashed into
``jax.jit``'s cache key). Registration uses ``jax.tree_util.register_dataclass``, which
JAX flattens in C++, so passing such an object through ``jax.jit`` costs about what
passing its children does.

Example:
    >>> from flaxen import struct
    >>> @struct.dataclass
    ... class Point:
    ...     x: float
    ...     label: str = struct.field(pytree_node=False, default="p")
    >>> Point(1.0).replace(x=2.0)
    Point(x=2.0, label='p')
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, dataclass_transform

import jax

T = TypeVar("T")


def field(pytree_node: bool = True, **kwargs: Any) -> Any:
    """A dataclass field; ``pytree_node=False`` makes it static (not traced by JAX)."""
    metadata = dict(kwargs.pop("metadata", None) or {})
    metadata["pytree_node"] = pytree_node
    return dataclasses.field(metadata=metadata, **kwargs)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def dataclass(cls: type[T]) -> type[T]:
    """Turns ``cls`` into a frozen dataclass registered as a pytree, with ``.replace``."""
    if "__dataclass_fields__" not in cls.__dict__:
        cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    data = [f.name for f in fields if f.metadata.get("pytree_node", True)]
    meta = [f.name for f in fields if not f.metadata.get("pytree_node", True)]
    cls.replace = lambda self, **updates: dataclasses.replace(self, **updates)  # type: ignore[attr-defined]
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
    return cls


