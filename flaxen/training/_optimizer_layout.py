"""The pre-release optimizer checkpoint layout, read and written for flaxen's optimizers.

The pre-release Flax stored an optimizer as ``state/step`` plus one small record per
parameter, ``state/param_states/<param path>/<field>`` (``params/`` first for a Model
target), with the field names of its per-leaf states (``momentum``; ``grad_ema`` and
``grad_sq_ema``; ``G``; ``v``). flaxen's optimizers keep optax's state instead
(``state/param_states/0/mu/<param path>``...). This module converts between the two for the
optimizers whose optax state holds exactly the pre-release values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flaxen import optim, serialization
from flaxen.errors import CheckpointError
from flaxen.nn.base import Model
from flaxen.traverse_util import path_to_str, unflatten_dict

# optax state field -> pre-release per-parameter field, per optimizer.
FIELDS: dict[type, dict[str, str]] = {
    optim.GradientDescent: {},
    optim.Momentum: {"trace": "momentum"},
    optim.Adam: {"mu": "grad_ema", "nu": "grad_sq_ema"},
    optim.LAMB: {"mu": "grad_ema", "nu": "grad_sq_ema"},
    optim.Adagrad: {"sum_of_squares": "G"},
    optim.RMSProp: {"nu": "v"},
}

Path = tuple[str, ...]


def _flat(tree: Any, prefix: Path = ()) -> dict[Path, Any]:
    if isinstance(tree, dict):
        if not tree:
            return {prefix: {}}
        out: dict[Path, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, (*prefix, k)))
        return out
    return {prefix: tree}


def _native_entries(opt: optim.Optimizer) -> tuple[dict[Path, Any], list[Path], Path]:
    """``(native flat param_states, param paths, prefix)`` of a template optimizer."""
    params = opt.target.params if isinstance(opt.target, Model) else opt.target
    param_paths = [p for p, v in _flat(serialization.to_state_dict(params)).items()
                   if not (isinstance(v, dict))]
    prefix: Path = ("params",) if isinstance(opt.target, Model) else ()
    native = _flat(serialization.to_state_dict(opt.state)["param_states"])
    return native, param_paths, prefix


def _split(path: Path, fields: dict[str, str], param_paths: set[Path]) -> tuple[str, Path] | None:
    for i, key in enumerate(path):
        if key in fields and path[i + 1:] in param_paths:
            return key, path[i + 1:]
    return None


def supported(opt: Any) -> bool:
    return isinstance(opt, optim.Optimizer) and type(opt.optimizer_def) in FIELDS


def to_prerelease(opt: optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """The pre-release layout of ``state`` (the state dict of ``opt``).

    Raises:
      CheckpointError: ``opt``'s optimizer has no pre-release layout.
    """
    if not supported(opt):
        raise CheckpointError(
            f"layout='prerelease' is not available for {type(opt.optimizer_def).__name__}; "
            f"it is for {sorted(t.__name__ for t in FIELDS)}. Save with the default layout.")
    fields = FIELDS[type(opt.optimizer_def)]
    _, param_paths, prefix = _native_entries(opt)
    native = _flat(state["state"]["param_states"])
    step = state["state"]["step"]
    out: dict[Path, Any] = {(*prefix, *p): {} for p in param_paths}
    for path, value in native.items():
        hit = _split(path, fields, set(param_paths))
        if hit is not None:
            out.pop((*prefix, *hit[1]), None)
            out[(*prefix, *hit[1], fields[hit[0]])] = value
        elif path[-1] == "count" and int(np.asarray(value)) == int(np.asarray(step)):
            continue  # optax's own step counter: the pre-release derived it from `step`
        elif not (isinstance(value, dict) and not value):
            raise CheckpointError(
                f"Cannot write {path_to_str(path)} of a {type(opt.optimizer_def).__name__} "
                "state in the pre-release layout. Save with the default layout.")
    param_states = unflatten_dict(out) if out else {}
    return {**state, "state": {"step": step, "param_states": param_states}}


def to_native(opt: optim.Optimizer, state: Any) -> Any:
    """``state`` in flaxen's layout if it is in the pre-release layout for ``opt``; else
    ``state`` unchanged (the normal comparison then reports any difference)."""
    if not supported(opt) or not isinstance(state, dict) or not isinstance(
            state.get("state"), dict):
        return state
    ps = state["state"].get("param_states")
    if not isinstance(ps, dict) or "step" not in state["state"]:
        return state
    fields = FIELDS[type(opt.optimizer_def)]
    native, param_paths, prefix = _native_entries(opt)
    expected = {(*prefix, *p, f) for p in param_paths for f in fields.values()} or {
        (*prefix, *p) for p in param_paths}
    have = _flat(ps)
    if set(have) != expected:
        return state
    step = state["state"]["step"]
    out: dict[Path, Any] = {}
    for path, value in native.items():
        hit = _split(path, fields, set(param_paths))
        if hit is not None:
            out[path] = have[(*prefix, *hit[1], fields[hit[0]])]
        elif path[-1] == "count":
            out[path] = np.asarray(step, np.asarray(value).dtype)
        else:
            out[path] = value
    return {**state, "state": {"step": step, "param_states": unflatten_dict(out)}}


def map_optimizers(target: Any, state: Any, fn: Any) -> Any:
    """``state`` with ``fn(optimizer, sub_state)`` applied where ``target`` holds an
    ``Optimizer`` (searched through dicts, lists, tuples and dataclasses)."""
    import dataclasses

    if isinstance(target, optim.Optimizer):
        return fn(target, state)
    if not isinstance(state, dict) or isinstance(target, Model):
        return state
    if isinstance(target, dict):
        children = {str(k): v for k, v in target.items()}
    elif isinstance(target, tuple) and hasattr(target, "_fields"):
        children = {f: getattr(target, f) for f in target._fields}
    elif isinstance(target, list | tuple):
        children = {str(i): v for i, v in enumerate(target)}
    elif dataclasses.is_dataclass(target) and not isinstance(target, type):
        children = {f.name: getattr(target, f.name) for f in dataclasses.fields(target)
                    if f.metadata.get("pytree_node", True)}
    else:
        return state
    return {k: map_optimizers(children[k], v, fn) if k in children else v
            for k, v in state.items()}
