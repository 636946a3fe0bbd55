"""Restoring a state dict onto a target: every path, shape and dtype compared first."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from flaxen import _byte_format, serialization
from flaxen.errors import CheckpointMismatchError
from flaxen.training import _optimizer_layout
from flaxen.training._checkpoint_files import shown
from flaxen.traverse_util import path_to_str


@dataclasses.dataclass(frozen=True)
class RestoreReport:
    """What a restore did. Paths are state dict keys spelled by ``traverse_util.path_to_str``
    (``params/Dense_0/kernel``, ``state/BatchNorm_1/mean``; ``<root>`` for a bare leaf).

    Attributes:
      path: the checkpoint file read, or None when none was found.
      restored: paths whose values came from the checkpoint.
      missing: paths of the target that the checkpoint lacks (kept from the target).
      unexpected: paths in the checkpoint that the target lacks (ignored).
      mismatched: ``(path, description)`` where shape, dtype or type differ (kept from
        the target).
    """

    path: str | None
    restored: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        """True when every path matched (nothing missing, unexpected or mismatched)."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        where = shown(self.path) if self.path is not None else "(none found)"
        lines = [f"checkpoint {where}: {len(self.restored)} restored, {len(self.missing)} "
                 f"missing, {len(self.unexpected)} unexpected, {len(self.mismatched)} mismatched"]
        lines += [f"  missing:    {p}" for p in self.missing[:50]]
        lines += [f"  unexpected: {p}" for p in self.unexpected[:50]]
        lines += [f"  mismatched: {p}: {d}" for p, d in self.mismatched[:50]]
        hidden = sum(max(0, len(x) - 50) for x in (self.missing, self.unexpected,
                                                     self.mismatched))
        if hidden:
            lines.append(f"  ... and {hidden} more")
        return "\n".join(lines)


class _Empty:
    """Marks an empty sub-dict in a flattened state dict (structure, no values)."""

    def __repr__(self) -> str:
        return "{}"


_EMPTY = _Empty()
Path = tuple[str, ...]


def _flatten(tree: Any, prefix: Path = ()) -> dict[Path, Any]:
    if isinstance(tree, dict):
        if not tree:
            return {prefix: _EMPTY}
        out: dict[Path, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, (*prefix, str(k))))
        return out
    return {prefix: tree}


def _unflatten(flat: dict[Path, Any]) -> Any:
    if () in flat:
        return {} if flat[()] is _EMPTY else flat[()]
    root: dict[str, Any] = {}
    for path, value in flat.items():
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = {} if value is _EMPTY else value
    return root


def _to_host(x: Any) -> Any:
    """jax.Array leaves of a state (from Orbax, safetensors.flax) as numpy arrays."""
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        if serialization.is_key_array(x):
            x = jax.random.key_data(x)
        return _byte_format._host_array(x)  # gathers arrays sharded across processes
    return x


def _as_stored(x: Any) -> Any:
    """What the file holds for target leaf ``x``: typed PRNG keys are stored as key data."""
    if serialization.is_key_array(x) and hasattr(x, "shape"):
        impl_shape = jax.eval_shape(jax.random.key_data, x)
        return jax.ShapeDtypeStruct(impl_shape.shape, impl_shape.dtype)
    return x


def _describe(x: Any) -> str:
    if x is _EMPTY:
        return "an empty dict"
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"shape {tuple(x.shape)} {np.dtype(x.dtype).name}"
    return type(x).__name__


_SCALAR_KINDS = {bool: "b", int: "iu", float: "f", complex: "fc"}


def _kind_of(dtype: Any) -> str:
    dtype = np.dtype(dtype)
    if jax.dtypes.issubdtype(dtype, np.floating):
        return "f"
    return dtype.kind


def _match(t: Any, c: Any) -> tuple[Any, str | None]:
    """``(value, None)`` when checkpoint leaf ``c`` may replace target leaf ``t`` (converted
    where a Python scalar meets a 0-d array), else ``(None, why not)``."""
    problem = f"expected {_describe(_as_stored(t))}, got {_describe(c)}"
    if t is _EMPTY or c is _EMPTY:
        return (c, None) if t is c else (None, problem)
    is_array = isinstance(c, np.ndarray | np.generic)
    if hasattr(t, "shape") and hasattr(t, "dtype"):
        s = _as_stored(t)
        if is_array and tuple(c.shape) == tuple(s.shape) and np.dtype(c.dtype) == np.dtype(
                s.dtype):
            return c, None
        # A Python scalar (pre-release step counters, Orbax scalars) into a 0-d array.
        if (type(c) in _SCALAR_KINDS and tuple(s.shape) == ()
                and _kind_of(s.dtype) in _SCALAR_KINDS[type(c)]):
            value = np.asarray(c).astype(s.dtype)
            if value.item() == c:
                return value, None
        return None, problem
    if type(t) in _SCALAR_KINDS:
        if type(c) is type(t):
            return c, None
        # A stored 0-d array into a Python scalar (`TrainState(step=0)`): same kind only.
        if is_array and c.shape == () and _kind_of(c.dtype) in _SCALAR_KINDS[type(t)]:
            return type(t)(c.item()), None
        return None, problem
    if t is None or isinstance(t, str | bytes):
        return (c, None) if type(c) is type(t) else (None, problem)
    return c, None


def _path_name(path: Path) -> str:
    return path_to_str(path) or "<root>"


def _enclosing_prefix(missing: list[Path], have: dict[Path, Any]) -> Path | None:
    """A path under which the checkpoint holds every missing entry (e.g. ``target``)."""
    if not missing:
        return None
    first = missing[0]
    for h in have:
        if len(h) > len(first) and h[len(h) - len(first):] == first:
            prefix = h[:len(h) - len(first)]
            if all((*prefix, *m) in have for m in missing):
                return prefix
    return None


def _hint(prefix: Path | None) -> str:
    if prefix is None:
        return ""
    where = path_to_str(prefix)
    return (f"\nThe checkpoint holds every missing entry under '{where}/' (for example an "
            "optimizer checkpoint restored into a bare Model). Restore that part with "
            f"`checkpoints.restore_checkpoint(ckpt_dir, target, subtree='{where}')`, or "
            "restore into the object that was saved (e.g. `opt_def.create(model)`).")


def restore_state(target: Any, state: Any, strict: bool = True,
                  path: str | None = None) -> tuple[Any, RestoreReport]:
    """Restores ``state`` (a state dict) onto ``target``, comparing every leaf first.

    Optimizer entries in the pre-release layout (``state/param_states/<param>/<field>``)
    are converted to flaxen's layout first, for the optimizers listed in
    ``docs/checkpoints.md``. Leaves may be numpy arrays, ``jax.Array`` (what Orbax and
    ``safetensors.flax`` return) or Python scalars; a 0-d array restores into a Python
    scalar of the same kind and the other way round, everything else must match in
    shape and dtype exactly.

    Args:
      target: the template; its leaves decide shapes, dtypes and device placement.
      state: a state dict, e.g. from ``serialization.msgpack_restore``.
      strict: raise on any difference; if False, keep the target's value where the state
        lacks or mismatches an entry.
      path: the file name for messages.

    Returns:
      ``(restored, report)``.

    Raises:
      CheckpointMismatchError: ``strict`` and some path is missing, unexpected or
        mismatched (the message lists all of them, ``.report`` has the details); or
        nothing at all could be restored (also with ``strict=False``).
    """
    state = jax.tree.map(_to_host, state)
    state = _optimizer_layout.map_optimizers(target, state, _optimizer_layout.to_native)
    want = _flatten(serialization.to_state_dict(target))
    have = _flatten(state)
    merged, restored, missing, mismatched = {}, [], [], []
    for p, t in want.items():
        if p not in have:
            missing.append(p)
            merged[p] = t
            continue
        value, problem = _match(t, have[p])
        if problem:
            mismatched.append((_path_name(p), problem))
            merged[p] = t
        else:
            restored.append(_path_name(p))
            merged[p] = value
    unexpected = [_path_name(p) for p in have if p not in want]
    report = RestoreReport(path, tuple(restored), tuple(_path_name(p) for p in missing),
                           tuple(sorted(unexpected)), tuple(mismatched))
    hint = _hint(_enclosing_prefix(missing, have))
    if strict and not report.ok:
        advice = hint or (
            "\nIf this is intended (fine-tuning, changed model), restore with strict=False "
            "to keep the target's values for these entries and get this report back.")
        raise CheckpointMismatchError(
            f"The checkpoint does not match the target. {report}{advice}", report)
    if not restored and any(v is not _EMPTY for v in want.values()):
        raise CheckpointMismatchError(
            f"Nothing in the checkpoint fits the target, so a partial restore would return "
            f"the target unchanged. {report}{hint}", report)
    return serialization.from_state_dict(target, _unflatten(merged)), report
