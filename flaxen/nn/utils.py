"""``nn.utils``: the pre-release helpers ``CallStack`` and ``classproperty``.

The pre-release module also had private trace helpers (``_masters``, ``_current_trace``,
``_trace_level``, ``_level_of_value``) that read ``jax.core.trace_state``, a JAX internal
that no longer exists (and that Flax itself stubbed out in June 2020, after omnistaging).
They are **not provided**: flaxen uses no private JAX API. The checks they powered
("created outside of the current Jax transformation") are done in flaxen with the public
``jax.extend.core.get_opaque_trace_state``, recorded when a scope opens and compared when
a traced value is stored (see ``nn._context.trace_state``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class CallStack:
    """A thread-local stack of frames (any objects), innermost last.

    Example:
        >>> stack = CallStack()
        >>> with stack.frame({"depth": 1}) as f:
        ...     len(stack), stack[-1] is f
        (1, True)
        >>> len(stack)
        0
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def _stack(self) -> list[Any]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    @contextlib.contextmanager
    def frame(self, data: Any = None) -> Iterator[Any]:
        """Pushes ``data`` (a new ``{}`` if None) for the block, yields it, then pops it."""
        data = {} if data is None else data
        self._stack.append(data)
        try:
            yield data
        finally:
            self._stack.pop()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._stack)

    def __len__(self) -> int:
        return len(self._stack)

    def __getitem__(self, item: Any) -> Any:
        return self._stack[item]


class classproperty(Generic[T]):  # noqa: N801 (the pre-release name)
    """A read-only property computed from the class: ``f(cls)``.

    Example:
        >>> class A:
        ...     @classproperty
        ...     def name(cls):
        ...         return cls.__name__.lower()
        >>> A.name, A().name
        ('a', 'a')
    """

    def __init__(self, f: Callable[[Any], T]):
        self.f = f
        self.__doc__ = f.__doc__

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        return self.f(type(obj) if owner is None else owner)
