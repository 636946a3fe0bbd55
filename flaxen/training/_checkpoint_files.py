"""Checkpoint files on disk: names, listing that survives concurrent pruning, atomic writes.

A checkpoint is named exactly ``{prefix}{step}``, with ``step`` a non-negative integer
written without leading zeros, and a prefix that does not end in a digit (otherwise
``model_1`` + ``0`` and ``model_`` + ``10`` would be the same file).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import stat
import time
import uuid
import zlib
from typing import Any

import numpy as np

from flaxen import _byte_format
from flaxen.errors import CheckpointError, CheckpointExistsError, CheckpointWriteError

_log = logging.getLogger("flaxen.training.checkpoints")

STEP_RE = re.compile(r"0|[1-9][0-9]*")
TMP_MARK = ".flaxen-tmp-"
HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40] or "host"
_READ_PIECE = 64 * 2**20
# Markers of a finished Orbax checkpoint directory (what Flax's save_checkpoint writes).
_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "commit_success.txt", "manifest.ocdbt")


def shown(path: str | os.PathLike[str]) -> str:
    """``path`` for a message: quoted, and a relative path also resolved against the
    working directory (``'ckpt/checkpoint_3' (resolved: /home/me/run/ckpt/checkpoint_3)``),
    so a message read later in a log still names the file."""
    text = os.fspath(path)
    if os.path.isabs(text):
        return repr(text)
    return f"{text!r} (resolved: {os.path.abspath(text)})"


def step_text(step: Any) -> str:
    """The file name suffix of ``step`` (an int, or a 0-d integer array)."""
    if hasattr(step, "ndim") and getattr(step, "ndim", None) == 0 and hasattr(step, "item"):
        step = step.item()  # a 0-d numpy or jax array, e.g. optimizer.state.step
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise CheckpointError(
            f"A checkpoint step must be a non-negative int, got {step!r} "
            f"({type(step).__name__}). Float and negative steps are not supported: names "
            "must sort and prune unambiguously.")
    return str(int(step))


def check_prefix(prefix: Any) -> None:
    if not isinstance(prefix, str) or "/" in prefix or os.sep in prefix:
        raise CheckpointError(
            f"prefix must be a file name prefix without a path separator, got {prefix!r}; "
            "put directories into ckpt_dir.")
    if prefix[-1:].isdigit():
        raise CheckpointError(
            f"prefix {prefix!r} ends in a digit, so its names are ambiguous ({prefix}0 is "
            f"also step {prefix[-1]}0 of prefix {prefix[:-1]!r}) and pruning could delete "
            f"another run's checkpoints. End the prefix with a separator, e.g. {prefix + '_'!r}.")


def scan(ckpt_dir: str, prefix: str) -> tuple[list[tuple[int, str]], bool]:
    """``([(step, path)...] sorted by step, saw_temp_file)`` from one directory listing.

    Nothing is stat'ed: entries may vanish (pruned) or be directories.
    """
    try:
        names = os.listdir(ckpt_dir)
    except (FileNotFoundError, NotADirectoryError):
        return [], False
    except OSError as e:
        raise CheckpointError(f"Cannot list the checkpoint directory {shown(ckpt_dir)}: {e}") from e
    found, saw_tmp = [], False
    for name in names:
        if name.startswith(prefix) and STEP_RE.fullmatch(name[len(prefix):]):
            found.append((int(name[len(prefix):]), os.path.join(ckpt_dir, name)))
        elif TMP_MARK in name:
            saw_tmp = True
    found.sort()
    return found, saw_tmp


def is_orbax_dir(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, m)) for m in _ORBAX_MARKERS)


def _kind(path: str) -> str | None:
    """``'file'``, ``'orbax'``, ``'other'`` or None when ``path`` no longer exists."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return "file"
    return "orbax" if stat.S_ISDIR(mode) and is_orbax_dir(path) else "other"


def complete_checkpoints(ckpt_dir: str, prefix: str) -> list[tuple[int, str]]:
    """The checkpoints (files and Orbax directories) in ``ckpt_dir``, by step."""
    found, _ = scan(ckpt_dir, prefix)
    return [(s, p) for s, p in found if _kind(p) in ("file", "orbax")]


def latest(ckpt_dir: str, prefix: str) -> str | None:
    """The path of the largest-step checkpoint, robust against concurrent saves.

    A save renames the new file in place before it prunes older ones, so at every moment
    one complete checkpoint exists once the first save finished. If the entry chosen from
    a listing vanished (pruned after the listing), the directory is listed again.
    """
    for attempt in range(1000):
        found, saw_tmp = scan(ckpt_dir, prefix)
        vanished = False
        for _, path in reversed(found):
            kind = _kind(path)
            if kind in ("file", "orbax"):
                return path
            if kind is None:
                vanished = True
                break
        if not vanished and not (saw_tmp and attempt == 0):
            return None
        if attempt > 10:
            time.sleep(0.001)
    raise CheckpointError(f"The checkpoints in {shown(ckpt_dir)} changed on every one of 1000 "
                          "listings; cannot pick the latest.")


STREAM_CHECK_BYTES = 256 * 2**20


def check_before_reading(path: str) -> None:
    """For a flaxen file above ``STREAM_CHECK_BYTES``: verifies its checksum in 64 MiB
    pieces before the whole file is read into memory, so a damaged huge file is refused
    without allocating its size. Smaller files are checked after the (single) read.

    Raises:
      SerializationError: the checksum does not match.
      FileNotFoundError: the file vanished.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= STREAM_CHECK_BYTES:
            return
        head = f.read(32)
        f.seek(size - 12)
        tail = f.read(12)
        if not _byte_format.is_flaxen_data(memoryview(head + tail)):
            return  # a Flax or pre-release file: no checksum to check
        f.seek(0)
        crc, left = 0, size - 4
        while left > 0:
            piece = f.read(min(_READ_PIECE, left))
            if not piece:
                break
            crc = zlib.crc32(piece, crc)
            left -= len(piece)
    if left or crc != int.from_bytes(tail[-4:], "big"):
        _byte_format.verify_checksum(memoryview(b""))  # raises the "Damaged data" error


def read_file(path: str, max_bytes: int) -> memoryview:
    """The bytes of ``path`` (read-only), refusing files larger than ``max_bytes``.

    Raises:
      FileNotFoundError: the file vanished (the caller may list again).
      CheckpointError: too large, or unreadable.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise CheckpointError(
                f"The checkpoint {shown(path)} is {size / 2**30:.2f} GiB, above the limit of "
                f"{max_bytes / 2**30:.2f} GiB for one file. If it is yours, pass a larger "
                "`max_bytes=` (or set `checkpoints.MAX_FILE_BYTES`).")
        buf = bytearray(size)
        view = memoryview(buf)
        done = 0
        while done < size:
            n = f.readinto(view[done:done + _READ_PIECE])
            if not n:
                break
            done += n
    return view[:done].toreadonly()


# -- Writing ---------------------------------------------------------------------------


def write_error(what: str, path: str, e: OSError) -> CheckpointWriteError:
    code = e.errno or -1
    reason, advice = {
        errno.ENOSPC: ("the disk is full", "Free space, or choose another ckpt_dir"),
        errno.EDQUOT: ("the disk quota is exceeded", "Free space, or choose another ckpt_dir"),
        errno.EROFS: ("the file system is read-only", "Choose a ckpt_dir on a writable "
                      "file system"),
        errno.EACCES: ("permission denied (read-only directory?)", "Choose a writable "
                       "ckpt_dir or fix its permissions"),
        errno.EPERM: ("operation not permitted (read-only directory?)", "Choose a writable "
                      "ckpt_dir or fix its permissions"),
    }.get(code, (os.strerror(code) if e.errno else str(e), "Fix the cause, or choose "
                 "another ckpt_dir"))
    return CheckpointWriteError(
        f"Could not {what} {shown(path)}: {reason} ({e}). No checkpoint was changed: the previous "
        f"checkpoints are intact. {advice}, then save again.")


def fsync_dir(path: str) -> None:
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


def remove_quietly(path: str) -> None:
    try:
        if os.path.isdir(path):
            return  # an Orbax directory: never deleted by flaxen
        os.remove(path)
    except OSError as e:
        if e.errno != errno.ENOENT:
            _log.warning("Could not remove %s: %s", shown(path), e)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_tmp(ckpt_dir: str, prefix: str) -> None:
    """Removes temporary files left by killed savers of this host (never another host's)."""
    mark = re.compile(re.escape("." + prefix) + r".*" + re.escape(TMP_MARK)
                      + re.escape(HOST) + r"-(\d+)-[0-9a-f]+")
    try:
        names = os.listdir(ckpt_dir)
    except OSError:
        return
    for name in names:
        m = mark.fullmatch(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            remove_quietly(os.path.join(ckpt_dir, name))


def _write_new_file(path: str, parts: list[bytes]) -> None:
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


_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}


def exists_error(ckpt_dir: str, step: str, names: list[str]) -> CheckpointExistsError:
    return CheckpointExistsError(
        f"Cannot save step {step} in {shown(ckpt_dir)}: checkpoint(s) of the same or a later "
        f"step exist ({names[:5]}). Pass overwrite=True to replace them (later steps are "
        "then removed), or use another ckpt_dir.")


def place(ckpt_dir: str, final: str, parts: list[bytes], overwrite: bool) -> None:
    """Writes ``parts`` to a temporary file, fsyncs it, and moves it to ``final``.

    ``overwrite=False`` moves it with ``os.link``, which fails if ``final`` exists: of
    several processes saving the same step, exactly one succeeds (the others get
    ``CheckpointExistsError``). Where hard links are not supported, the move falls back
    to ``os.replace`` after a check (not atomic across processes).
    """
    name = os.path.basename(final)
    tmp = os.path.join(ckpt_dir, f".{name}{TMP_MARK}{HOST}-{os.getpid()}-"
                                 f"{uuid.uuid4().hex[:12]}")
    created = False
    try:
        _write_new_file(tmp, parts)
        created = True
        if overwrite:
            os.replace(tmp, final)
            created = False
            return
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise exists_error(ckpt_dir, name, [name]) from None
        except OSError as e:
            if e.errno not in _NO_LINKS:
                raise
            if os.path.lexists(final):
                raise exists_error(ckpt_dir, name, [name]) from None
            os.replace(tmp, final)
            created = False
    except OSError as e:
        # Only a file this call created is removed (nothing to clean after a failed open).
        created = created or os.path.lexists(tmp)
        raise write_error("write the checkpoint", final, e) from e
    finally:
        if created:
            remove_quietly(tmp)

