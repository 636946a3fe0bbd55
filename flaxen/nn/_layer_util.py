"""Small helpers shared by the layer files: readable paths, dtype-aware params, checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

from flaxen.errors import ParamShapeError, ShapeError
from flaxen.nn._context import current_path

InitFn = Callable[..., Any]


def where(module: Any = None) -> str:
    """The readable path of ``module`` (``CNN/Conv_0``), or of the running module if None."""
    if module is None:
        return current_path()
    return module._frame.label()


def with_dtype(init: InitFn, param_dtype: Any) -> Callable[[jax.Array, Sequence[int]], Any]:
    """``init(key, shape)`` stored as ``param_dtype``.

    float32 calls ``init(key, shape)`` (so two-argument user initializers work); any other
    dtype is passed as the third argument, as every ``jax.nn.initializers`` function takes.
    """
    if jax.numpy.dtype(param_dtype) == jax.numpy.float32:
        return lambda key, shape: init(key, shape)
    return lambda key, shape: init(key, shape, param_dtype)


def param_for_input(module: Any, name: str, shape: Sequence[int], init: InitFn,
                    input_shape: Sequence[int]) -> Any:
    """``module.param(name, shape, init)``, turning a stored-shape mismatch into an error
    that names the module path, the input shape and both parameter shapes."""
    try:
        return module.param(name, tuple(shape), init)
    except ParamShapeError as e:
        stored = module.get_param(name).shape
        raise ShapeError(
            where(module), f"the input does not fit the stored {name} of shape "
            f"{tuple(stored)}", f"an input that needs {name} of shape {tuple(stored)}",
            f"input shape {tuple(input_shape)}, which needs {name} of shape {tuple(shape)}",
            "Most likely the input has another number of features than at init; check the "
            "input shape or re-initialise the parameters.") from e


def check_rank(path: str, x: Any, allowed: Sequence[int], what: str = "input rank") -> None:
    """Raises ShapeError if ``x.ndim`` is not one of ``allowed``."""
    if x.ndim not in allowed:
        exp = " or ".join(str(a) for a in allowed)
        raise ShapeError(path, what, f"rank {exp}", f"rank {x.ndim} (shape {tuple(x.shape)})")


def as_tuple(v: int | Sequence[int], n: int | None = None) -> tuple[int, ...]:
    """An int becomes ``(v,) * n`` (or ``(v,)``); a sequence becomes a tuple."""
    if isinstance(v, int):
        return (v,) * (n or 1)
    return tuple(v)
