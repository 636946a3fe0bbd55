"""Checkpoints that are always complete on disk, and restores that check every leaf.

``save_checkpoint`` writes ``ckpt_dir/{prefix}{step}`` through a temporary file in the same
directory (written, fsynced, linked or renamed into place, directory fsynced), so a reader
sees either the previous set of checkpoints or the new complete one, never a partial
file, even if the process is killed at any moment. Old checkpoints are pruned only after
the new one is in place.

``restore_checkpoint`` compares every path, shape and dtype of the file with the target
and reports all differences at once; ``strict=False`` restores what matches and returns a
``RestoreReport`` too (fine-tuning, model surgery). It also reads Flax's files: plain
msgpack files and Orbax checkpoint directories. See ``docs/checkpoints.md``.
"""

from __future__ import annotations

import decimal
import logging
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal, overload

import jax
from jax.typing import ArrayLike

from flaxen import serialization
from flaxen.errors import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    SerializationError,
)
from flaxen.training import _checkpoint_files as files
from flaxen.training import _optimizer_layout, _orbax
from flaxen.training._checkpoint_async import AsyncCheckpointer
from flaxen.training._checkpoint_restore import RestoreReport, restore_state

__all__ = ["AsyncCheckpointer", "MAX_FILE_BYTES", "RestoreReport", "checkpoint_steps",
           "latest_checkpoint", "natural_sort", "restore_checkpoint", "restore_state",
           "save_checkpoint"]

_log = logging.getLogger(__name__)

MAX_FILE_BYTES = 64 * 2**30
"""Loaders refuse checkpoint files larger than this (64 GiB) unless given ``max_bytes``."""

_TMP_MARK = files.TMP_MARK
_HOST = files.HOST

Layout = Literal["flaxen", "prerelease"]


# -- Listing ---------------------------------------------------------------------------


def natural_sort(file_list: Iterable[str], signed: bool = True) -> list[str]:
    """Sorts names so that numbers in them compare as numbers (``f_2`` before ``f_10``).

    Args:
      file_list: names to sort.
      signed: whether a ``-`` before a number is its sign.
    """
    num = re.compile(r"([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)" if signed else
                     r"(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)")

    def key(name: str) -> list[Any]:
        parts = num.split(name)
        return [(0, decimal.Decimal(p), "") if i % 2 else (1, decimal.Decimal(0), p)
                for i, p in enumerate(parts) if p]

    return sorted(file_list, key=key)


def checkpoint_steps(ckpt_dir: str | os.PathLike[str],
                     prefix: str = "checkpoint_") -> list[int]:
    """The steps of the complete checkpoints in ``ckpt_dir``, in increasing order.

    A name counts only if it is exactly ``prefix`` followed by a non-negative integer
    without leading zeros (``checkpoint_12``; never ``checkpoint_012``, ``checkpoint_-5``,
    ``checkpoint_1.5`` or a temporary file).
    """
    files.check_prefix(prefix)
    return [s for s, _ in files.complete_checkpoints(os.fspath(ckpt_dir), prefix)]


def latest_checkpoint(ckpt_dir: str | os.PathLike[str],
                      prefix: str = "checkpoint_") -> str | None:
    """The path of the checkpoint with the largest step, or None if there is none.

    A missing directory also gives None. While another process saves and prunes, this
    never returns None (or a pruned path) once a first checkpoint is complete.
    """
    files.check_prefix(prefix)
    return files.latest(os.fspath(ckpt_dir), prefix)


# -- Saving ----------------------------------------------------------------------------


def _check_keep(keep: Any) -> None:
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise CheckpointError(f"keep must be an int >= 1, got {keep!r}.")


def _state_dict(target: Any, layout: str) -> Any:
    if layout not in ("flaxen", "prerelease"):
        raise CheckpointError(f'layout must be "flaxen" or "prerelease", got {layout!r}.')
    state = serialization.to_state_dict(target)
    if layout == "prerelease":
        state = _optimizer_layout.map_optimizers(target, state, _optimizer_layout.to_prerelease)
    return state


def _prepare_save(ckpt_dir: str | os.PathLike[str], target: Any, step: ArrayLike, prefix: str,
                  keep: int, overwrite: bool, layout: Layout,
                  format: serialization.Format) -> tuple[str, Callable[[], str]]:
    """Checks the arguments and encodes ``target``: ``(final path, write function)``."""
    ckpt_dir = os.fspath(ckpt_dir)
    text = files.step_text(step)
    files.check_prefix(prefix)
    _check_keep(keep)
    # In a multi-process run this gathers arrays sharded across processes (a collective).
    data = serialization.msgpack_serialize_parts(_state_dict(target, layout), format)
    return (os.path.join(ckpt_dir, prefix + text),
            lambda: _save_bytes(ckpt_dir, data, text, prefix, keep, overwrite))


def save_checkpoint(ckpt_dir: str | os.PathLike[str], target: Any, step: ArrayLike,
                    prefix: str = "checkpoint_", keep: int = 1, overwrite: bool = False,
                    *, layout: Layout = "flaxen",
                    format: serialization.Format = "flaxen") -> str:
    """Writes ``target`` to ``ckpt_dir/{prefix}{step}`` atomically; prunes old checkpoints.

    Args:
      ckpt_dir: the directory (created if needed).
      target: any object ``serialization.to_bytes`` accepts (Model, Optimizer, dicts...).
      step: a non-negative int (0 included), or a 0-d integer array; the name suffix.
      prefix: file name prefix; must not end in a digit.
      keep: how many checkpoints (the largest steps) to keep, >= 1.
      overwrite: if False, saving a step that exists, or a step below an existing one,
        raises; of several processes saving the same step, exactly one succeeds. If True,
        it replaces that step and removes checkpoints of larger steps.
      layout: ``"flaxen"`` (default): optimizers as their optax state. ``"prerelease"``:
        optimizers as the pre-release Flax stored them (``state/param_states/<param
        path>/<field>``), for the optimizers listed in ``docs/checkpoints.md``.
      format: ``"flaxen"`` (default, with checksum) or ``"flax"`` (a plain msgpack file
        that Flax's ``restore_checkpoint`` / ``from_bytes`` read; no checksum).

    With several processes (``jax.distributed.initialize``), call it on every process:
    arrays sharded across processes are gathered (a collective), process 0 writes, and all
    processes wait until the file is in place.

    Returns:
      The path of the new checkpoint.

    Raises:
      CheckpointExistsError: the step (or a later one) exists and ``overwrite`` is False.
      CheckpointWriteError: the write failed (disk full, read-only); nothing was changed.
      SerializationError: ``target`` holds a value that cannot be serialized.
    """
    path, write = _prepare_save(ckpt_dir, target, step, prefix, keep, overwrite, layout,
                                format)
    if jax.process_count() == 1:
        return write()
    # Several processes: process 0 writes; the barrier means that when save_checkpoint
    # returns on any process, the new checkpoint is in place.
    from jax.experimental import multihost_utils

    try:
        if jax.process_index() == 0:
            return write()
        return path
    finally:
        multihost_utils.sync_global_devices(f"flaxen.save_checkpoint:{os.path.basename(path)}")


def _save_bytes(ckpt_dir: str, data: list[bytes], step_text: str, prefix: str, keep: int,
                overwrite: bool) -> str:
    final = os.path.join(ckpt_dir, prefix + step_text)
    try:
        os.makedirs(ckpt_dir, exist_ok=True)
    except OSError as e:
        raise files.write_error("create the checkpoint directory", ckpt_dir, e) from e
    this = int(step_text)
    later = [p for s, p in files.scan(ckpt_dir, prefix)[0] if s >= this]
    if later and not overwrite:
        raise files.exists_error(ckpt_dir, step_text, [os.path.basename(p) for p in later])
    files.place(ckpt_dir, final, data, overwrite)
    files.fsync_dir(ckpt_dir)
    existing = files.scan(ckpt_dir, prefix)[0]
    # The new checkpoint is in place: only now remove older (and, with overwrite, later).
    # The `keep` largest steps stay (a later step saved meanwhile by another process
    # counts too).
    stale = [p for s, p in existing if s > this] if overwrite else []
    kept = [p for s, p in existing if s <= this or not overwrite]
    for path in stale + kept[:-keep]:
        files.remove_quietly(path)
    files.remove_stale_tmp(ckpt_dir, prefix)
    return final


# -- Restoring -------------------------------------------------------------------------


def _resolve(ckpt_dir: str, step: Any, prefix: str) -> str | None:
    if os.path.isfile(ckpt_dir) or files.is_orbax_dir(ckpt_dir):
        if step is not None:
            raise CheckpointError(f"{files.shown(ckpt_dir)} is one checkpoint; pass step=None to "
                                  "restore it.")
        return ckpt_dir
    if step is None:
        latest = files.latest(ckpt_dir, prefix)
        if latest is None:
            _log.info("No checkpoint with prefix %r in %s; returning the target unchanged.",
                      prefix, files.shown(ckpt_dir))
        return latest
    if not os.path.isdir(ckpt_dir):
        raise CheckpointNotFoundError(
            f"The checkpoint directory {files.shown(ckpt_dir)} does not exist (step {step} "
            "requested). Check the path.")
    path = os.path.join(ckpt_dir, prefix + files.step_text(step))
    if not (os.path.isfile(path) or files.is_orbax_dir(path)):
        raise CheckpointNotFoundError(
            f"Matching checkpoint not found: {files.shown(path)}. Steps available with prefix "
            f"{prefix!r}: {checkpoint_steps(ckpt_dir, prefix)[-20:]}.")
    return path


def _load(ckpt_dir: str, step: Any, prefix: str, max_bytes: int) -> tuple[str | None, Any]:
    """``(path, state dict)`` of the checkpoint to restore; ``(None, None)`` if none."""
    for attempt in range(100):
        path = _resolve(ckpt_dir, step, prefix)
        if path is None:
            return None, None
        if os.path.isdir(path):
            return path, _orbax.restore(path)
        try:
            if os.path.getsize(path) <= max_bytes:
                files.check_before_reading(path)
            data = files.read_file(path, max_bytes)
        except FileNotFoundError as e:
            # The latest checkpoint was pruned by a concurrent save between listing and
            # opening (an evaluation job following a training run): look again.
            if step is not None or attempt == 99:
                raise CheckpointNotFoundError(
                    f"Cannot read the checkpoint {files.shown(path)}: {e}") from e
            continue
        except OSError as e:
            raise CheckpointError(f"Cannot read the checkpoint {files.shown(path)}: {e}") from e
        except SerializationError as e:
            raise SerializationError(f"Checkpoint {files.shown(path)}: {e}") from e
        try:
            return path, serialization.msgpack_restore(data)
        except SerializationError as e:
            raise SerializationError(f"Checkpoint {files.shown(path)}: {e}") from e
    raise AssertionError("unreachable")


def _subtree(state: Any, subtree: str, path: str) -> Any:
    for key in subtree.strip("/").split("/"):
        if not isinstance(state, dict) or key not in state:
            have = sorted(state)[:20] if isinstance(state, dict) else type(state).__name__
            raise CheckpointMismatchError(
                f"The checkpoint {files.shown(path)} has no entry {subtree!r} (at {key!r} it "
                f"has {have}).",
                RestoreReport(path))
        state = state[key]
    return state


@overload
def restore_checkpoint(ckpt_dir: str | os.PathLike[str], target: Any,
                       step: ArrayLike | None = ..., prefix: str = ...,
                       strict: Literal[True] = ..., *,
                       subtree: str | None = ..., max_bytes: int | None = ...) -> Any: ...
@overload
def restore_checkpoint(ckpt_dir: str | os.PathLike[str], target: Any,
                       step: ArrayLike | None = ..., prefix: str = ..., *,
                       strict: Literal[False],
                       subtree: str | None = ...,
                       max_bytes: int | None = ...) -> tuple[Any, RestoreReport]: ...


def restore_checkpoint(ckpt_dir: str | os.PathLike[str], target: Any,
                       step: ArrayLike | None = None,
                       prefix: str = "checkpoint_", strict: bool = True, *,
                       subtree: str | None = None, max_bytes: int | None = None) -> Any:
    """Restores the latest checkpoint (or ``step``) onto ``target``.

    Args:
      ckpt_dir: the directory, or the path of one checkpoint (file or Orbax directory).
      target: the template (e.g. a freshly initialised optimizer). Restored arrays get the
        dtype and device placement (sharding) of the target's leaves. ``None`` returns the
        raw state dict of numpy arrays, unchecked.
      step: the step to load; None loads the largest. ``0`` is a real step.
      prefix: file name prefix.
      strict: if True, any missing, unexpected or mismatched entry raises (all listed at
        once). If False, what matches is restored, the rest keeps the target's values,
        and the result is ``(restored, RestoreReport)``; restoring nothing at all raises.
      subtree: restore only this ``/``-separated part of the checkpoint, e.g.
        ``subtree='target'`` restores the weights of an optimizer checkpoint into a Model.
      max_bytes: refuse files larger than this (default ``MAX_FILE_BYTES``, 64 GiB).

    Returns:
      The restored object; ``(restored, report)`` with ``strict=False``. When no
      checkpoint exists and ``step`` is None (also when the directory does not exist), the
      target is returned unchanged (with ``strict=False``: with a report whose ``path`` is
      None), so a training loop can "resume if present".

    Raises:
      CheckpointNotFoundError: ``step`` was given and its file or the directory is missing.
      CheckpointMismatchError: the file does not fit the target (see ``strict``).
      CheckpointError: the file is larger than ``max_bytes``, or an Orbax directory that
        cannot be read (orbax-checkpoint missing).
      SerializationError: the file is damaged, truncated or not a checkpoint.
    """
    ckpt_dir = os.fspath(ckpt_dir)
    files.check_prefix(prefix)
    path, state = _load(ckpt_dir, step, prefix, MAX_FILE_BYTES if max_bytes is None
                        else max_bytes)
    if path is None:
        return target if strict else (target, RestoreReport(None))
    if subtree is not None:
        state = _subtree(state, subtree, path)
    if target is None:
        return state if strict else (state, RestoreReport(path))
    restored, report = restore_state(target, state, strict=strict, path=path)
    return restored if strict else (restored, report)
