"""Converters: params between flaxen and Flax Linen, and to and from safetensors files.

**Layer names.** flaxen numbers the sub-modules of one parent in call order across all
classes (``Dense_0, Conv_1, Dense_2``); Linen numbers them per class (``Dense_0, Conv_0,
Dense_1``). Going to Linen renames each level's ``Class_N`` entries by their order within the
class. Going back needs the interleaving of classes, which a Linen dict does not keep, so
``linen_to_flaxen`` takes the flaxen params (and state) of the same model as a template,
for instance from ``Module.init_with_state``. Names given explicitly (``name="encoder"``)
are kept as they are on both sides.

**BatchNorm statistics.** flaxen keeps them as module state (a ``Collection`` of
``{"/path/BatchNorm_1": {"mean", "var"}}``); Linen keeps them in the ``batch_stats``
collection, nested like ``params``.

**safetensors.** A file holds a flat ``{name: array}`` map; nested params are written with
slash-joined paths (``"Dense_0/kernel"``) and rebuilt on load.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from flaxen.errors import SerializationError
from flaxen.nn.collection import Collection
from flaxen.traverse_util import path_to_str, unflatten_dict

_AUTO_NAME = re.compile(r"^(?P<cls>.+)_(?P<index>\d+)$")

Params = dict[str, Any]


def _tree_of_names(params: Params, state_paths: list[list[str]]) -> dict[str, Any]:
    """The module tree: ``{child_name: subtree}``, from params dicts and state paths."""
    tree: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            tree[key] = _tree_of_names(value, [])
    for path in state_paths:
        node = tree
        for part in path:
            node = node.setdefault(part, {})
    return tree


def _linen_names(children: list[str]) -> dict[str, str]:
    """``{flaxen_name: linen_name}`` for the children of one module."""
    auto = sorted((int(m["index"]), m["cls"], name) for name in children
                  if (m := _AUTO_NAME.match(name)))
    per_class: dict[str, int] = {}
    renamed = {name: name for name in children}
    for _, cls, name in auto:
        renamed[name] = f"{cls}_{per_class.get(cls, 0)}"
        per_class[cls] = per_class.get(cls, 0) + 1
    return renamed


def _rename(tree: Params, names: dict[str, Any], invert: bool) -> Params:
    """``tree`` with module keys renamed level by level, flaxen to Linen or (``invert``)
    back; ``names`` is the flaxen module tree from ``_tree_of_names``."""
    to_linen = _linen_names(list(names))
    mapping = {v: k for k, v in to_linen.items()} if invert else to_linen
    out: Params = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            new_key = mapping.get(key, key)
            flaxen_name = new_key if invert else key
            out[new_key] = _rename(value, names.get(flaxen_name, {}), invert)
        else:
            out[key] = value
    return out


def _state_paths(state: Collection | None) -> dict[tuple[str, ...], Any]:
    if state is None:
        return {}
    return {tuple(p for p in path.split("/") if p): value
            for path, value in state.as_dict().items()}


def flaxen_to_linen(params: Params, state: Collection | None = None) -> dict[str, Params]:
    """Flax Linen variables for a flaxen model's params and (BatchNorm) state.

    Args:
      params: the flaxen params dict, e.g. ``{"Conv_0": {...}, "Dense_1": {...}}``.
      state: the model's state Collection (BatchNorm ``mean``/``var``), or None.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` with Linen's per-class names
      (``batch_stats`` only when ``state`` holds entries), ready for
      ``linen_module.apply(variables, x)``. Arrays are the same objects, not copies.
    """
    flat_state = _state_paths(state)
    names = _tree_of_names(params, [list(p) for p in flat_state])
    variables = {"params": _rename(params, names, invert=False)}
    if flat_state:
        variables["batch_stats"] = _rename(unflatten_dict(flat_state), names, invert=False)
    return variables


def linen_to_flaxen(variables: dict[str, Params], params_template: Params,
                    state_template: Collection | None = None) -> tuple[Params, Collection | None]:
    """flaxen params and state from Flax Linen variables of the same architecture.

    Args:
      variables: Linen variables, ``{"params": ..., "batch_stats": ...}`` (a bare params
        dict is accepted too).
      params_template: params of the flaxen model (from ``init``), giving the flaxen names;
        only the structure and shapes are used.
      state_template: the flaxen model's state Collection when it has BatchNorm layers.

    Returns:
      ``(params, state)``: the values from ``variables`` under flaxen's names, and a
      Collection of the BatchNorm statistics (None when ``state_template`` is None).

    Raises:
      SerializationError: a name or shape in ``variables`` does not match the template.
    """
    linen_params = variables.get("params", variables)
    template_state = _state_paths(state_template)
    names = _tree_of_names(params_template, [list(p) for p in template_state])
    want = flaxen_to_linen(params_template, state_template)
    _check_same("params", want["params"], linen_params)
    params = _rename(linen_params, names, invert=True)
    if state_template is None:
        return params, None
    stats = variables.get("batch_stats", {})
    _check_same("batch_stats", want.get("batch_stats", {}), stats)
    nested = _rename(stats, names, invert=True)
    # Collection keys keep the pre-release spelling ('/BatchNorm_1'), which is pre-release
    # API (nn.Collection); everything printed uses path_to_str.
    flat = {"/" + "/".join(path): _get(nested, path) for path in template_state}
    return params, Collection(flat)


def _get(tree: Params, path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _check_same(where: str, want: Any, got: Any, keys: tuple[str, ...] = ()) -> None:
    at = path_to_str((where, *keys))
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(want) != set(got):
            got_keys = sorted(got) if isinstance(got, dict) else type(got).__name__
            raise SerializationError(
                f"linen_to_flaxen: the Linen variables at `{at}` have {got_keys}, the "
                f"flaxen template expects {sorted(want)} (after renaming to Linen's per-class "
                f"numbering). Pass the params of the same architecture as the template.")
        for key in want:
            _check_same(where, want[key], got[key], (*keys, key))
    elif np.shape(want) != np.shape(got):
        raise SerializationError(
            f"linen_to_flaxen: the Linen variable `{at}` has shape {np.shape(got)}, the "
            f"flaxen template expects {np.shape(want)}.")


def flatten_params(params: Params, sep: str = "/") -> dict[str, np.ndarray]:
    """``{"Dense_0/kernel": array}``: nested params as one flat map of NumPy arrays."""
    flat: dict[str, np.ndarray] = {}

    def walk(node: Params, keys: tuple[str, ...]) -> None:
        for key, value in node.items():
            if not isinstance(key, str) or sep in key:
                raise SerializationError(
                    f"flatten_params: key {key!r} at `{path_to_str(keys) or '<root>'}` must "
                    f"be a string without {sep!r} to make a flat path.")
            if isinstance(value, dict):
                walk(value, (*keys, key))
            else:
                flat[sep.join((*keys, key))] = np.asarray(value)

    walk(params, ())
    return flat


def unflatten_params(flat: dict[str, Any], sep: str = "/") -> Params:
    """The nested params dict back from ``flatten_params``'s flat map."""
    return unflatten_dict(flat, sep=sep)


def save_safetensors(params: Params, path: str | os.PathLike[str],
                     metadata: dict[str, str] | None = None) -> None:
    """Writes params (any float or int dtype, bfloat16 included) to a safetensors file.

    Args:
      params: nested dict of arrays; each is stored under its slash path
        (``"Dense_0/kernel"``). Empty sub-dicts are not stored.
      path: the file to write.
      metadata: optional string-to-string header entries.
    """
    from safetensors.numpy import save_file

    flat = {k: np.ascontiguousarray(v) for k, v in flatten_params(params).items()}
    bad = [k for k, v in flat.items() if v.dtype == object]
    if bad:
        raise SerializationError(
            f"save_safetensors: `{bad[0]}` holds Python objects, not numbers; only numeric "
            f"arrays can be written.")
    save_file(flat, os.fspath(path), metadata=metadata)


def load_safetensors(path: str | os.PathLike[str]) -> Params:
    """Reads a safetensors file into a nested params dict of NumPy arrays.

    Slash-separated names (``"Dense_0/kernel"``) become nested dicts, so a file written by
    ``save_safetensors`` (or by another tool using the same convention) loads as params.
    """
    from safetensors.numpy import load_file

    return unflatten_params(load_file(os.fspath(path)))
