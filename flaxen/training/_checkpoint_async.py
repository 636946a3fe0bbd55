"""``AsyncCheckpointer``: saves with the disk write in a background thread.

Thread-safe: one lock serialises ``save`` and ``wait`` from any number of threads. A
failed write is never lost: it is raised by the next ``save`` or ``wait`` (from whichever
thread calls first), and if the program ends before that, an exit handler logs it as an
error and ends the process with exit status 1.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
from jax.typing import ArrayLike

from flaxen.training._checkpoint_files import shown

if TYPE_CHECKING:  # checkpoints imports this module
    from flaxen.serialization import Format
    from flaxen.training.checkpoints import Layout

_log = logging.getLogger("flaxen.training.checkpoints")

# Failed writes not yet raised to the user: checkpointer key -> (path, error).
_unreported: dict[int, tuple[str, BaseException]] = {}
_unreported_lock = threading.Lock()
_keys = itertools.count()


def _report_at_exit() -> None:
    """Runs after Python joined the (non-daemon) write threads: reports lost saves."""
    with _unreported_lock:
        failures = list(_unreported.values())
        _unreported.clear()
    if not failures:
        return
    for path, error in failures:
        _log.error("flaxen: the asynchronous checkpoint save of %s FAILED and the program "
                   "ended before AsyncCheckpointer.wait() reported it: %s: %s", shown(path),
                   type(error).__name__, error)
    for handler in logging.getLogger().handlers + _log.handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(1)  # the exit status must say that a save was lost


atexit.register(_report_at_exit)


class AsyncCheckpointer:
    """Saves checkpoints with the disk write in a background thread.

    ``save`` takes the same arguments as ``save_checkpoint``. It copies the target to host
    memory and encodes it before returning (so the caller may donate or change the arrays
    right away); the write, fsync, rename and pruning run in a thread, with the same
    guarantees as ``save_checkpoint``. One write runs at a time: ``save`` first waits for
    the previous one.

    Thread safety: any number of threads may call ``save`` and ``wait`` on one
    checkpointer; the calls are serialised by a lock, so every save is written in turn.

    Failures: a failed write is raised by the next ``save`` or ``wait`` call (once). If the
    program ends first, the failure is logged as an error at exit and the process exits
    with status 1.

    With several processes, ``save`` is synchronous (``save_checkpoint``).

    Example (``with`` waits for the last write when the block ends)::

      with AsyncCheckpointer() as ckpt:
          ...
          ckpt.save(ckpt_dir, optimizer, step)  # returns while the file is being written
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._key = next(_keys)

    def _start(self, path: str, write: Callable[[], object]) -> None:
        key = self._key

        def run() -> None:
            try:
                write()
            except BaseException as e:  # noqa: BLE001 - re-raised by wait() or at exit
                with _unreported_lock:
                    _unreported[key] = (path, e)

        self._thread = threading.Thread(target=run, name="flaxen-checkpoint", daemon=False)
        self._thread.start()

    def save(self, ckpt_dir: str | os.PathLike[str], target: Any, step: ArrayLike,
             prefix: str = "checkpoint_", keep: int = 1, overwrite: bool = False,
             layout: Layout = "flaxen", format: Format = "flaxen") -> str:
        """Starts saving ``target``; returns the path the checkpoint will have.

        Raises:
          CheckpointError: the error of a previous failed write (raised before anything
            else is done), and the argument errors of ``save_checkpoint``.
        """
        from flaxen.training import checkpoints

        with self._lock:
            self._wait_locked()
            if jax.process_count() > 1:
                return checkpoints.save_checkpoint(ckpt_dir, target, step, prefix, keep,
                                                   overwrite, layout=layout, format=format)
            path, write = checkpoints._prepare_save(ckpt_dir, target, step, prefix, keep,
                                                    overwrite, layout, format)
            self._start(path, write)
            return path

    def _wait_locked(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with _unreported_lock:
            failure = _unreported.pop(self._key, None)
        if failure is not None:
            raise failure[1]

    def wait(self) -> None:
        """Blocks until the pending write is done; raises its error if it failed."""
        with self._lock:
            self._wait_locked()

    def __enter__(self) -> AsyncCheckpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wait()
