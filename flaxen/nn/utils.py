"""``nn.utils``: input checks for layers, and the pre-release ``CallStack`` and ``classproperty``.

The checks (``check_features``, ``check_positive``, ``check_number``, ``check_rank``,
``param_for_input``) raise the library's errors, naming where the bad value arrived
(``Module.label`` inside a layer, ``current_label()`` inside a plain function such as a
pooling op), what was expected and what was got. Every layer in ``flaxen.nn`` uses them,
and so can yours: they are the same public API.

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
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from flaxen.errors import LayerArgumentError, ParamShapeError, ShapeError
from flaxen.nn._context import current_path

T = TypeVar("T")


def current_label() -> str:
    """Where the innermost running module is, for messages (``CNN/Dense_0``).

    For plain functions that run inside modules (pooling, dropout); a Module's own
    ``apply`` uses ``self.label``. Outside any module: ``"<top level>"``.
    """
    return current_path()


def as_tuple(value: int | np.integer | Sequence[int], n: int | None = None) -> tuple[int, ...]:
    """An int as ``(value,) * n`` (``(value,)`` if ``n`` is None); a sequence as a tuple."""
    if isinstance(value, int | np.integer):
        return (int(value),) * (n or 1)
    return tuple(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def check_features(where: str, name: str, value: Any) -> tuple[int, ...]:
    """``value`` (an int or a sequence of ints) as a tuple of ints >= 1.

    Args:
      where: the module path for the message (``self.label``).
      name: the argument's name (``"features"``).
      value: what the user passed.

    Returns:
      The ints, as a tuple (one entry for an int).

    Raises:
      LayerArgumentError: an entry is not an int >= 1, or there are none.
    """
    items = (tuple(value) if isinstance(value, Sequence) and not isinstance(value, str)
             else (value,))
    if not items or not all(_is_int(v) and v >= 1 for v in items):
        raise LayerArgumentError(where, name, "a positive int (or a tuple of them)",
                                 repr(value), f"For example `{name}=16`.")
    return tuple(int(v) for v in items)


def check_positive(where: str, name: str, value: Any, n: int) -> tuple[int, ...] | None:
    """None, or ``value`` as ``n`` ints >= 1 (one int means the same on every axis).

    Raises:
      LayerArgumentError: not ``n`` positive ints (nor one).
    """
    if value is None:
        return None
    if isinstance(value, int | np.integer):
        items: tuple[Any, ...] = (value,) * n
    else:
        try:
            items = tuple(value)
        except TypeError:  # a float or another scalar: reported below
            items = (value,)
    if len(items) != n or not all(_is_int(v) and v >= 1 for v in items):
        raise LayerArgumentError(where, name, f"{n} positive ints (one per spatial axis) or "
                                 "one positive int", repr(value))
    return tuple(int(v) for v in items)


def check_number(where: str, name: str, value: Any, low: float, high: float,
                 allowed: str) -> None:
    """Checks that ``value`` is a number in ``[low, high]``.

    A traced value (under ``jit``) cannot be checked and is let through.

    Args:
      where, name: as in ``check_features``.
      value: a Python number or a scalar array.
      low, high: the allowed range, inclusive.
      allowed: the message's "expected" text, e.g. ``"a number in [0, 1]"``.

    Raises:
      LayerArgumentError: not a scalar number, or outside the range.
    """
    if isinstance(value, jax.core.Tracer):
        return
    number = isinstance(value, int | float | np.number | np.ndarray | jax.Array)
    if isinstance(value, bool) or not number or np.ndim(value) != 0:
        raise LayerArgumentError(where, name, allowed, repr(value))
    if not low <= float(value) <= high:
        raise LayerArgumentError(where, name, allowed, repr(value))


def check_rank(where: str, x: jax.Array, allowed: Sequence[int],
               what: str = "input rank") -> None:
    """Checks that ``x.ndim`` is one of ``allowed``.

    Raises:
      ShapeError: it is not; the message shows the shape.
    """
    if x.ndim not in allowed:
        expected = " or ".join(str(a) for a in allowed)
        raise ShapeError(where, what, f"rank {expected}",
                         f"rank {x.ndim} (shape {tuple(x.shape)})")


def param_for_input(module: Any, name: str, shape: Sequence[int], init: Callable[..., Any],
                    input_shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> Any:
    """``module.param(name, shape, init, dtype)`` whose shape follows from the input.

    When the stored parameter has another shape, the error names the module path, the
    input's shape and both parameter shapes: most likely the input changed since init.

    Args:
      module: the running module (``self``).
      name, shape, init, dtype: as in ``Module.param``.
      input_shape: the shape of the input that ``shape`` was computed from.

    Returns:
      The parameter.

    Raises:
      ShapeError: the stored parameter does not fit the input.
      LayerArgumentError: the stored parameter is not an array (e.g. a list).
    """
    try:
        return module.param(name, tuple(shape), init, dtype)
    except ParamShapeError as e:
        stored = module.get_param(name)
        if not hasattr(stored, "shape"):
            raise LayerArgumentError(
                module.label, f"the stored parameter {name!r}", "an array",
                f"a {type(stored).__name__}",
                "Convert the params to arrays, e.g. `params = jax.tree.map(jnp.asarray, "
                "params)` (a list is a pytree node, not an array).") from e
        raise ShapeError(
            module.label, f"the input does not fit the stored {name} of shape "
            f"{tuple(stored.shape)}", f"an input that needs {name} of shape "
            f"{tuple(stored.shape)}",
            f"input shape {tuple(input_shape)}, which needs {name} of shape {tuple(shape)}",
            "Most likely the input has another number of features than at init; check the "
            "input shape or re-initialise the parameters.") from e


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
