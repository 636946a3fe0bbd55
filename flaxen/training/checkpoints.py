"""Checkpoints that are always complete on disk, and restores that check every leaf.

``save_checkpoint`` writes ``ckpt_dir/{prefix}{step}`` through a temporary file in the same
directory (written, fsynced, renamed with ``os.replace``, directory fsynced), so a reader
sees either the previous set of checkpoints or the new complete one, never a partial
file, even if the process is killed at any moment. Old checkpoints are pruned only after
the new one is in place.

``restore_checkpoint`` compares every path, shape and dtype of the file with the target
and reports all differences at once; ``strict=False`` restores what matches and returns a
``RestoreReport`` too (fine-tuning, model surgery). See ``docs/checkpoints.md``.
"""

from __future__ import annotations

import dataclasses
import decimal
import errno
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterable
from typing import Any, Literal, overload

import jax
import numpy as np

from flaxen import serialization
from flaxen.errors import (
    CheckpointError,
    CheckpointExistsError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    SerializationError,
)

_log = logging.getLogger(__name__)

# A step suffix: a signed int or float (``checkpoint_100``, ``checkpoint_-0.5``, ``1e-3``).
_STEP_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_TMP_MARK = ".flaxen-tmp-"
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40] or "host"


# -- Listing ---------------------------------------------------------------------------


def _step_str(step: Any) -> str:
    if hasattr(step, "ndim") and getattr(step, "ndim", None) == 0 and hasattr(step, "item"):
        step = step.item()  # a 0-d numpy or jax array, e.g. optimizer.state.step
    if isinstance(step, bool) or not isinstance(step, int | float | np.integer | np.floating):
        raise CheckpointError(
            f"A checkpoint step must be an int or a float, got {step!r} "
            f"({type(step).__name__}).")
    text = str(int(step)) if isinstance(step, int | np.integer) else repr(float(step))
    if not _STEP_RE.fullmatch(text):
        raise CheckpointError(f"A checkpoint step must be finite, got {step!r}.")
    return text


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or "/" in prefix or os.sep in prefix:
        raise CheckpointError(
            f"prefix must be a file name prefix without a path separator, got {prefix!r}; "
            "put directories into ckpt_dir.")


def _checkpoints(ckpt_dir: str, prefix: str) -> list[tuple[decimal.Decimal, str]]:
    """``(step, path)`` of the complete checkpoints in ``ckpt_dir``, oldest step first.

    Only names that are exactly ``prefix`` + a number count: temporary files never do.
    """
    _check_prefix(prefix)
    try:
        names = os.listdir(ckpt_dir)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CheckpointError(f"Cannot list the checkpoint directory {ckpt_dir!r}: {e}") from e
    found = []
    for name in names:
        suffix = name[len(prefix):]
        if name.startswith(prefix) and _STEP_RE.fullmatch(suffix):
            path = os.path.join(ckpt_dir, name)
            if os.path.isfile(path):
                found.append((decimal.Decimal(suffix), path))
    found.sort()
    return found


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


def checkpoint_steps(ckpt_dir: str, prefix: str = "checkpoint_") -> list[int | float]:
    """The steps of the complete checkpoints in ``ckpt_dir``, in increasing order."""
    return [int(s) if s == s.to_integral_value() and "." not in str(s) and "E" not in str(s)
            else float(s) for s, _ in _checkpoints(ckpt_dir, prefix)]


def latest_checkpoint(ckpt_dir: str, prefix: str = "checkpoint_") -> str | None:
    """The path of the checkpoint with the largest step, or None if there is none.

    A missing directory also gives None.
    """
    found = _checkpoints(ckpt_dir, prefix)
    return found[-1][1] if found else None


# -- Saving ----------------------------------------------------------------------------


def _write_error(what: str, path: str, e: OSError) -> CheckpointWriteError:
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied (read-only directory?)",
        errno.EPERM: "operation not permitted (read-only directory?)",
    }.get(e.errno or -1, os.strerror(e.errno) if e.errno else str(e))
    return CheckpointWriteError(
        f"Could not {what} {path!r}: {reason} ({e}). No checkpoint was changed: the previous "
        "checkpoints are intact. Free space or choose a writable ckpt_dir, then save again."
    )


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def _write_file(path: str, parts: list[bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError as e:
        if e.errno != errno.ENOENT:
            _log.warning("Could not remove %s: %s", path, e)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_tmp(ckpt_dir: str, prefix: str) -> None:
    """Removes temporary files left by killed savers of this host (never another host's)."""
    mark = re.compile(re.escape("." + prefix) + r".*" + re.escape(_TMP_MARK)
                      + re.escape(_HOST) + r"-(\d+)-[0-9a-f]+")
    for name in os.listdir(ckpt_dir):
        m = mark.fullmatch(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _remove_quietly(os.path.join(ckpt_dir, name))


def save_checkpoint(ckpt_dir: str | os.PathLike[str], target: Any, step: int | float,
                    prefix: str = "checkpoint_", keep: int = 1,
                    overwrite: bool = False) -> str:
    """Writes ``target`` to ``ckpt_dir/{prefix}{step}`` atomically; prunes old checkpoints.

    Args:
      ckpt_dir: the directory (created if needed).
      target: any object ``serialization.to_bytes`` accepts (Model, Optimizer, dicts...).
      step: an int (0 included) or a float metric; the file name suffix.
      prefix: file name prefix.
      keep: how many checkpoints (the largest steps) to keep, >= 1.
      overwrite: if False, saving a step that exists, or a step below an existing one,
        raises. If True, it replaces that step and removes checkpoints of larger steps.

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
    ckpt_dir = os.fspath(ckpt_dir)
    step_text = _step_str(step)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise CheckpointError(f"keep must be an int >= 1, got {keep!r}.")
    # In a multi-process run this gathers arrays sharded across processes (a collective).
    data = serialization.msgpack_serialize_parts(serialization.to_state_dict(target))
    if jax.process_count() == 1:
        return _save_bytes(ckpt_dir, data, step_text, prefix, keep, overwrite)
    # Several processes: process 0 writes; the barrier means that when save_checkpoint
    # returns on any process, the new checkpoint is in place.
    from jax.experimental import multihost_utils

    try:
        if jax.process_index() == 0:
            return _save_bytes(ckpt_dir, data, step_text, prefix, keep, overwrite)
        return os.path.join(ckpt_dir, prefix + step_text)
    finally:
        multihost_utils.sync_global_devices(f"flaxen.save_checkpoint:{prefix}{step_text}")


class AsyncCheckpointer:
    """Saves checkpoints with the disk write in a background thread.

    ``save`` takes the same arguments as ``save_checkpoint``. It copies the target to host
    memory and encodes it before returning (so the caller may donate or change the arrays
    right away); the write, fsync, rename and pruning run in a thread, with the same
    guarantees as ``save_checkpoint``. One write runs at a time: ``save`` first waits for
    the previous one. A failed write is raised by the next ``save`` or ``wait``.

    With several processes, ``save`` is synchronous (``save_checkpoint``).

    Example (``with`` waits for the last write when the block ends)::

      with AsyncCheckpointer() as ckpt:
          ...
          ckpt.save(ckpt_dir, optimizer, step)  # returns while the file is being written
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, ckpt_dir: str | os.PathLike[str], target: Any, step: int | float,
             prefix: str = "checkpoint_", keep: int = 1, overwrite: bool = False) -> str:
        """Starts saving ``target``; returns the path the checkpoint will have."""
        self.wait()
        if jax.process_count() > 1:
            return save_checkpoint(ckpt_dir, target, step, prefix, keep, overwrite)
        ckpt_dir = os.fspath(ckpt_dir)
        step_text = _step_str(step)
        _check_prefix(prefix)
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise CheckpointError(f"keep must be an int >= 1, got {keep!r}.")
        data = serialization.msgpack_serialize_parts(serialization.to_state_dict(target))

        def run() -> None:
            try:
                _save_bytes(ckpt_dir, data, step_text, prefix, keep, overwrite)
            except BaseException as e:  # noqa: BLE001 - re-raised by wait()
                self._error = e

        self._thread = threading.Thread(target=run, name="flaxen-checkpoint", daemon=False)
        self._thread.start()
        return os.path.join(ckpt_dir, prefix + step_text)

    def wait(self) -> None:
        """Blocks until the pending write is done; raises its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __enter__(self) -> AsyncCheckpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wait()


def _save_bytes(ckpt_dir: str, data: list[bytes], step_text: str, prefix: str, keep: int,
                overwrite: bool) -> str:
    final = os.path.join(ckpt_dir, prefix + step_text)
    try:
        os.makedirs(ckpt_dir, exist_ok=True)
    except OSError as e:
        raise _write_error("create the checkpoint directory", ckpt_dir, e) from e
    this = decimal.Decimal(step_text)
    later = [p for s, p in _checkpoints(ckpt_dir, prefix) if s >= this]
    if later and not overwrite:
        raise CheckpointExistsError(
            f"Cannot save step {step_text} in {ckpt_dir!r}: checkpoint(s) of the same or a "
            f"later step exist ({[os.path.basename(p) for p in later][:5]}). Pass "
            "overwrite=True to replace them (later steps are then removed), or use another "
            "ckpt_dir."
        )
    tmp = os.path.join(ckpt_dir, f".{prefix}{step_text}{_TMP_MARK}{_HOST}-{os.getpid()}-"
                                 f"{uuid.uuid4().hex[:12]}")
    try:
        _write_file(tmp, data)
        os.replace(tmp, final)
    except OSError as e:
        _remove_quietly(tmp)
        raise _write_error("write the checkpoint", final, e) from e
    _fsync_dir(ckpt_dir)
    # The new checkpoint is in place: only now remove older (and, with overwrite, later).
    existing = _checkpoints(ckpt_dir, prefix)
    stale = [p for s, p in existing if s > this] if overwrite else []
    kept = [p for s, p in existing if s <= this or not overwrite]
    for path in stale + kept[:-keep]:
        _remove_quietly(path)
    _remove_stale_tmp(ckpt_dir, prefix)
    return final


# -- Restoring -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RestoreReport:
    """What a restore did. Paths are ``/``-joined state dict keys (``params/Dense_0/kernel``).

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
        lines = [f"checkpoint {self.path}: {len(self.restored)} restored, {len(self.missing)} "
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


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(tree, dict):
        if not tree:
            return {prefix: _EMPTY}
        out: dict[tuple[str, ...], Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, (*prefix, str(k))))
        return out
    return {prefix: tree}


def _unflatten(flat: dict[tuple[str, ...], Any]) -> Any:
    if () in flat:
        return {} if flat[()] is _EMPTY else flat[()]
    root: dict[str, Any] = {}
    for path, value in flat.items():
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = {} if value is _EMPTY else value
    return root


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


def _leaf_problem(t: Any, c: Any) -> str | None:
    """Why checkpoint leaf ``c`` cannot replace target leaf ``t``, or None if it can."""
    if t is _EMPTY or c is _EMPTY:
        ok = t is c
    elif hasattr(t, "shape") and hasattr(t, "dtype"):
        t = _as_stored(t)
        ok = (isinstance(c, np.ndarray | np.generic) and tuple(c.shape) == tuple(t.shape)
              and np.dtype(c.dtype) == np.dtype(t.dtype))
    elif t is None or isinstance(t, bool | int | float | complex | str | bytes):
        ok = type(c) is type(t)
    else:
        ok = True
    return None if ok else f"expected {_describe(_as_stored(t))}, got {_describe(c)}"


def _join(path: tuple[str, ...]) -> str:
    return "/".join(path) or "/"


def restore_state(target: Any, state: Any, strict: bool = True,
                  path: str | None = None) -> tuple[Any, RestoreReport]:
    """Restores ``state`` (a state dict) onto ``target``, comparing every leaf first.

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
        mismatched; the message lists all of them, ``.report`` has the details.
    """
    want = _flatten(serialization.to_state_dict(target))
    have = _flatten(state)
    merged, restored, missing, mismatched = {}, [], [], []
    for p, t in want.items():
        if p not in have:
            missing.append(_join(p))
            merged[p] = t
            continue
        problem = _leaf_problem(t, have[p])
        if problem:
            mismatched.append((_join(p), problem))
            merged[p] = t
        else:
            restored.append(_join(p))
            merged[p] = have[p]
    unexpected = [_join(p) for p in have if p not in want]
    report = RestoreReport(path, tuple(restored), tuple(missing), tuple(sorted(unexpected)),
                           tuple(mismatched))
    if strict and not report.ok:
        raise CheckpointMismatchError(
            f"The checkpoint does not match the target. {report}\nIf this is intended "
            "(fine-tuning, changed model), restore with strict=False to keep the target's "
            "values for these entries and get this report back.", report)
    return serialization.from_state_dict(target, _unflatten(merged)), report


def _resolve(ckpt_dir: str, step: Any, prefix: str) -> str | None:
    if os.path.isfile(ckpt_dir):
        if step is not None:
            raise CheckpointError(f"{ckpt_dir!r} is a file; pass step=None to restore it.")
        return ckpt_dir
    if step is None:
        latest = latest_checkpoint(ckpt_dir, prefix)
        if latest is None:
            _log.info("No checkpoint with prefix %r in %r; returning the target unchanged.",
                      prefix, ckpt_dir)
        return latest
    if not os.path.isdir(ckpt_dir):
        raise CheckpointNotFoundError(
            f"The checkpoint directory {ckpt_dir!r} does not exist (step {step} requested). "
            "Check the path.")
    path = os.path.join(ckpt_dir, prefix + _step_str(step))
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(
            f"Matching checkpoint not found: {path}. Steps available with prefix {prefix!r}: "
            f"{checkpoint_steps(ckpt_dir, prefix)[-20:]}.")
    return path


@overload
def restore_checkpoint(ckpt_dir: str | os.PathLike[str], target: Any, step: Any = ...,
                       prefix: str = ..., strict: Literal[True] = ...) -> Any: ...
@overload
def restore_checkpoint(ckpt_dir: str | os.PathLike[str], target: Any, step: Any = ...,
                       prefix: str = ..., *,
                       strict: Literal[False]) -> tuple[Any, RestoreReport]: ...


def restore_checkpoint(ckpt_dir: str | os.PathLike[str], target: Any, step: Any = None,
                       prefix: str = "checkpoint_", strict: bool = True) -> Any:
    """Restores the latest checkpoint (or ``step``) onto ``target``.

    Args:
      ckpt_dir: the directory, or the path of one checkpoint file.
      target: the template (e.g. a freshly initialised optimizer). Restored arrays get the
        dtype and device placement (sharding) of the target's leaves. ``None`` returns the
        raw state dict of numpy arrays, unchecked.
      step: the step to load; None loads the largest. ``0`` is a real step.
      prefix: file name prefix.
      strict: if True, any missing, unexpected or mismatched entry raises (all listed at
        once). If False, what matches is restored, the rest keeps the target's values,
        and the result is ``(restored, RestoreReport)``.

    Returns:
      The restored object; ``(restored, report)`` with ``strict=False``. When no
      checkpoint exists and ``step`` is None (also when the directory does not exist), the
      target is returned unchanged (with ``strict=False``: with a report whose ``path`` is
      None), so a training loop can "resume if present".

    Raises:
      CheckpointNotFoundError: ``step`` was given and its file or the directory is missing.
      CheckpointMismatchError: ``strict`` and the file does not fit the target.
      SerializationError: the file is damaged, truncated or not a checkpoint.
    """
    ckpt_dir = os.fspath(ckpt_dir)
    _check_prefix(prefix)
    for attempt in range(5):
        path = _resolve(ckpt_dir, step, prefix)
        if path is None:
            return target if strict else (target, RestoreReport(None))
        try:
            with open(path, "rb") as f:
                data = f.read()
            break
        except FileNotFoundError as e:
            # The latest checkpoint was pruned by a concurrent save between listing and
            # opening (an evaluation job following a training run): look again.
            if step is not None or attempt == 4:
                raise CheckpointNotFoundError(f"Cannot read the checkpoint {path!r}: {e}") from e
        except OSError as e:
            raise CheckpointError(f"Cannot read the checkpoint {path!r}: {e}") from e
    try:
        state = serialization.msgpack_restore(data)
    except SerializationError as e:
        raise SerializationError(f"Checkpoint {path!r}: {e}") from e
    if target is None:
        return state if strict else (state, RestoreReport(path))
    restored, report = restore_state(target, state, strict=strict, path=path)
    return restored if strict else (restored, report)
