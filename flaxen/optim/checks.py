"""Input checks shared by every optimizer: hyper-parameter values, parameter dtypes and the
structure of gradients. Each failure is a flaxen error naming what was expected, what was
got and the fix."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxen import errors
from flaxen.traverse_util import path_to_str


def is_concrete(value: Any) -> bool:
    """Whether ``value`` is a known number or array (not traced under ``jit``)."""
    return not isinstance(value, jax.core.Tracer)


def is_numeric(value: Any) -> bool:
    """A Python/NumPy number or a numeric array (traced or not): a per-step value."""
    if isinstance(value, bool | int | float | complex | np.number):
        return True
    if isinstance(value, np.ndarray | jax.Array):
        return np.dtype(value.dtype).kind in "biufc"
    return False


def same_static(value: Any, default: Any) -> bool:
    """Whether a per-step ``value`` equals a structural hyper-parameter's ``default``."""
    if not isinstance(value, bool | int | float | str | type(None)):
        return False
    return value == default and type(value) is type(default)


def as_static(opt_name: str, name: str, value: Any) -> Any:
    """Constructor hyper-parameters as hashable Python values (jit's cache key)."""
    if isinstance(value, bool | int | float | str | type(None)):
        return value
    if isinstance(value, np.ndarray | np.generic | jax.Array):
        if not is_concrete(value):
            raise errors.HyperParamError(
                opt_name, name, "was given a traced value to the constructor",
                f"Create the optimizer outside jit and pass per-step values to "
                f"`apply_gradient(grads, {name}=value)` instead.")
        if np.size(value) != 1:
            raise errors.HyperParamError(opt_name, name, f"must be a scalar, got shape "
                                         f"{np.shape(value)}")
        return np.asarray(value).item()
    return value


def check_override(opt_def: Any, name: str, value: Any, names: list[str]) -> None:
    """Raises ``HyperParamError`` if ``name=value`` may not be given per step to ``opt_def``:
    an unknown name, a non-numeric value, a structural or switched-off hyper-parameter, or
    one created as a schedule."""
    opt = type(opt_def).__name__
    if name not in names:
        raise errors.HyperParamError(opt, name, "does not exist",
                                     f"Valid names: {', '.join(names)}.")
    if not is_numeric(value):
        raise errors.HyperParamError(
            opt, name, f"given per step must be a number or a numeric scalar array, got "
            f"{type(value).__name__} {value!r}",
            f"For example `apply_gradient(grads, {name}=0.9)`.")
    default = getattr(opt_def.hyper_params, name)
    if name in opt_def._static_names and not same_static(value, default):
        raise errors.HyperParamError(
            opt, name, "changes the structure of the update and is fixed at "
            "construction", f"Create a new `{opt}({name}=...)` instead.")
    if callable(default):
        raise errors.HyperParamError(
            opt, name, "was created as a schedule (a callable), which optax evaluates on "
            "its own step count; it cannot also be set per step",
            f"Either pass numbers per step, `{opt}()` + `apply_gradient(grads, "
            f"{name}=schedule(step))`, or keep the schedule in the constructor.")
    if name in opt_def._switch_names and default in (0, None):
        raise errors.HyperParamError(
            opt, name, f"was created as {default!r}, which leaves that part out of the "
            "update, so it cannot be set per step",
            f"Create the optimizer with a nonzero `{name}` to vary it per step.")


def check_nonnegative(opt_name: str, name: str, value: Any) -> None:
    """Raises ``HyperParamError`` for a concrete negative ``value``."""
    if value is None or not is_concrete(value):
        return
    arr = np.asarray(value)
    if arr.dtype.kind in "biuf" and np.any(arr < 0):
        raise errors.HyperParamError(
            opt_name, name, f"must be >= 0, got {value}",
            "Optimizers minimise the loss; to maximise, negate the loss.")


def check_inexact(optimizer: str, params: Any) -> None:
    """Optimizers update floating (or complex) params only: an integer param would be
    rounded (to 0 for small steps) silently."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            dtype = np.asarray(leaf).dtype
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise errors.ParamDtypeError(optimizer, path_to_str(path) or "<root>", dtype)


def check_gradient_structure(target: Any, grads: Any) -> None:
    """Raises ``GradientStructureError`` naming the first path where grads differ."""
    t_leaves, t_def = jax.tree.flatten(target)
    g_leaves, g_def = jax.tree.flatten(grads)
    same = bool(t_def == g_def)  # type: ignore[operator]
    if same and all(np.shape(t) == np.shape(g) for t, g in zip(t_leaves, g_leaves)):
        return
    t_flat, _ = jax.tree_util.tree_flatten_with_path(target)
    g_flat, _ = jax.tree_util.tree_flatten_with_path(grads)
    t_paths = {path_to_str(p) or "<root>": np.shape(v) for p, v in t_flat}
    g_paths = {path_to_str(p) or "<root>": np.shape(v) for p, v in g_flat}
    for path, shape in t_paths.items():
        if path not in g_paths:
            raise errors.GradientStructureError(path, "a gradient leaf", "none")
        if g_paths[path] != shape:
            raise errors.GradientStructureError(path, f"shape {shape}", f"shape {g_paths[path]}")
    for path in g_paths:
        if path not in t_paths:
            raise errors.GradientStructureError(path, "no leaf (not in the target)", "a leaf")
    raise errors.GradientStructureError("<root>", f"tree structure {t_def}", f"{g_def}")
