"""A small cache of compiled ``init_by_shape`` programs, keyed by what they depend on.

``Module.init_by_shape`` traces ``init`` on abstract inputs under ``jax.jit``; XLA then
drops the forward pass and compiles a program that only runs the initializers. The
tracing and compiling is nearly all of its cost (seconds for a ResNet-50 on CPU), and
it is the same for every call with the same module, input shapes and arguments: only
the PRNG key changes. So the jitted function is kept here, and a second call with an
equal key only runs the compiled initializers.

The key is ``(module class, name, input shapes and dtypes, further arguments, flags)``;
a call whose arguments cannot be hashed (arrays, dicts) is simply not cached. The
cache holds at most ``MAX_ENTRIES`` programs (least recently used dropped first);
``clear()`` empties it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax

MAX_ENTRIES = 32

# key -> (jitted init function, the list its first trace wrote the output shapes into)
_ENTRIES: collections.OrderedDict[Hashable, tuple[Callable[..., Any], list[Any]]] = (
    collections.OrderedDict())
stats = {"hits": 0, "misses": 0, "uncacheable": 0}


def make_key(module: type, name: str | None, specs: Sequence[jax.ShapeDtypeStruct],
             args: tuple, kwargs: dict[str, Any], *flags: Hashable) -> Hashable | None:
    """The cache key of an ``init_by_shape`` call, or None if it cannot be cached (an
    argument is unhashable, e.g. an array)."""
    key = (module, name, tuple((tuple(s.shape), str(s.dtype)) for s in specs),
           tuple((type(a), a) for a in args),
           tuple(sorted((k, type(v), v) for k, v in kwargs.items())), flags)
    try:
        hash(key)
    except TypeError:
        stats["uncacheable"] += 1
        return None
    return key


def lookup(key: Hashable | None) -> tuple[Callable[..., Any], list[Any]] | None:
    """The cached ``(jitted function, output shapes)`` for ``key``, if any."""
    if key is None:
        return None
    entry = _ENTRIES.get(key)
    if entry is None:
        stats["misses"] += 1
        return None
    stats["hits"] += 1
    _ENTRIES.move_to_end(key)
    return entry


def store(key: Hashable | None, fn: Callable[..., Any], out_shapes: list[Any]) -> None:
    """Keeps ``fn`` (already called once, so traced and compiled) under ``key``."""
    if key is None or key in _ENTRIES:
        return
    _ENTRIES[key] = (fn, out_shapes)
    while len(_ENTRIES) > MAX_ENTRIES:
        _ENTRIES.popitem(last=False)


def clear() -> None:
    """Forgets every cached program (and resets ``stats``)."""
    _ENTRIES.clear()
    for k in stats:
        stats[k] = 0
