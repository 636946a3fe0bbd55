"""Small helpers shared by the layer files: readable paths, dtype-aware params, checks."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from flaxen.errors import LayerArgumentError, ParamShapeError, ShapeError
from flaxen.nn._context import current_path

InitFn = Callable[..., Any]


def where(module: Any = None) -> str:
    """The readable path of ``module`` (``CNN/Conv_0``), or of the running module if None."""
    if module is None:
        return current_path()
    return module._frame.label()


def _takes_dtype(init: InitFn) -> bool:
    """Whether ``init`` accepts a third positional argument (the dtype)."""
    try:
        inspect.signature(init).bind(None, None, None)
    except TypeError:
        return False
    except ValueError:  # no signature (a C function): assume the jax convention
        return True
    return True


def call_init(init: InitFn, key: jax.Array, shape: Any, dtype: Any = jax.numpy.float32) -> Any:
    """``init(key, shape, dtype)``, the ``jax.nn.initializers`` convention.

    A pre-release style two-argument initializer ``init(key, shape)`` is called with two
    arguments and its result cast to ``dtype``.
    """
    if _takes_dtype(init):
        return init(key, shape, dtype)
    out = init(key, shape)
    if hasattr(out, "astype") and jax.numpy.dtype(dtype) != jax.numpy.float32:
        out = out.astype(dtype)
    return out


def with_dtype(init: InitFn, param_dtype: Any) -> Callable[[jax.Array, Sequence[int]], Any]:
    """``init`` as a ``(key, shape)`` function that stores ``param_dtype``
    (``init(key, shape, param_dtype)``; see ``call_init``)."""
    return lambda key, shape: call_init(init, key, shape, param_dtype)


def check_features(path: str, name: str, value: Any) -> tuple[int, ...]:
    """``value`` (an int or a sequence of ints) as a tuple of ints >= 1, else an error."""
    items = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (
        value,)
    ok = items and all(isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 1
                       for v in items)
    if not ok:
        raise LayerArgumentError(path, name, "a positive int (or a tuple of them)",
                                 repr(value), f"For example `{name}=16`.")
    return tuple(int(v) for v in items)


def check_positive(path: str, name: str, value: Any, n: int) -> tuple[int, ...] | None:
    """``None`` or ``value`` as ``n`` ints >= 1 (an int means the same on every axis)."""
    if value is None:
        return None
    items = (value,) * n if isinstance(value, int | np.integer) else tuple(value)
    if len(items) != n or not all(isinstance(v, int | np.integer) and not isinstance(v, bool)
                                  and v >= 1 for v in items):
        raise LayerArgumentError(path, name, f"{n} positive ints (one per spatial axis) or "
                                 "one positive int", repr(value))
    return tuple(int(v) for v in items)


def param_for_input(module: Any, name: str, shape: Sequence[int], init: InitFn,
                    input_shape: Sequence[int]) -> Any:
    """``module.param(name, shape, init)``, turning a stored-shape mismatch into an error
    that names the module path, the input shape and both parameter shapes."""
    try:
        return module.param(name, tuple(shape), init)
    except ParamShapeError as e:
        stored = module.get_param(name)
        if not hasattr(stored, "shape"):
            raise LayerArgumentError(
                where(module), f"the stored parameter {name!r}", "an array",
                f"a {type(stored).__name__}",
                "Convert the params to arrays, e.g. `params = jax.tree.map(jnp.asarray, "
                "params)` (a list is a pytree node, not an array).") from e
        raise ShapeError(
            where(module), f"the input does not fit the stored {name} of shape "
            f"{tuple(stored.shape)}", f"an input that needs {name} of shape "
            f"{tuple(stored.shape)}",
            f"input shape {tuple(input_shape)}, which needs {name} of shape {tuple(shape)}",
            "Most likely the input has another number of features than at init; check the "
            "input shape or re-initialise the parameters.") from e


def check_number(path: str, name: str, value: Any, low: float, high: float,
                 allowed: str) -> None:
    """Raises LayerArgumentError if ``value`` is a concrete number outside ``[low, high]``
    or not a number at all; traced values are left alone (they cannot be checked)."""
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, bool) or not isinstance(value, int | float | np.number | np.ndarray
                                                 | jax.Array) or np.ndim(value) != 0:
        raise LayerArgumentError(path, name, allowed, repr(value))
    if not low <= float(value) <= high:
        raise LayerArgumentError(path, name, allowed, repr(value))


def check_rank(path: str, x: Any, allowed: Sequence[int], what: str = "input rank") -> None:
    """Raises ShapeError if ``x.ndim`` is not one of ``allowed``."""
    if x.ndim not in allowed:
        exp = " or ".join(str(a) for a in allowed)
        raise ShapeError(path, what, f"rank {exp}", f"rank {x.ndim} (shape {tuple(x.shape)})")


def as_tuple(v: int | np.integer | Sequence[int], n: int | None = None) -> tuple[int, ...]:
    """An int becomes ``(v,) * n`` (or ``(v,)``); a sequence becomes a tuple."""
    if isinstance(v, int | np.integer):
        return (int(v),) * (n or 1)
    return tuple(v)
