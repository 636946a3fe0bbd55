"""A background thread that reads ahead from an iterator (e.g. a data pipeline)."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from flaxen.errors import FlaxenError


class PrefetchIterator(Iterator[Any]):
    """Wraps an iterator; a daemon thread keeps up to ``buffer_size`` items ready.

    Items come out in order. If the source raises, the exception is re-raised by the
    ``next`` call that reaches it; when the source ends, ``StopIteration``. ``close()``
    stops the thread (also usable as a context manager).

    Example:
      >>> with PrefetchIterator(iter(range(3)), buffer_size=2) as it:
      ...     list(it)
      [0, 1, 2]
    """

    def __init__(self, data_iter: Iterable[Any], buffer_size: int = 1):
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise FlaxenError(f"PrefetchIterator: buffer_size must be an int >= 1, got "
                              f"{buffer_size!r}.")
        self._source = iter(data_iter)
        self._buffer: collections.deque[tuple[str, Any]] = collections.deque()
        self._size = buffer_size
        self._cond = threading.Condition()
        self._active = True
        self._done = False
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: len(self._buffer) < self._size or not self._active)
                if not self._active:
                    return
            try:
                item: tuple[str, Any] = ("item", next(self._source))
            except StopIteration:
                item = ("end", None)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                item = ("error", e)
            with self._cond:
                self._buffer.append(item)
                self._cond.notify_all()
                if item[0] != "item":
                    return

    def __iter__(self) -> PrefetchIterator:
        return self

    def __next__(self) -> Any:
        with self._cond:
            if self._done:
                raise StopIteration
            self._cond.wait_for(lambda: bool(self._buffer) or not self._active)
            if not self._buffer:
                raise StopIteration
            kind, value = self._buffer.popleft()
            self._cond.notify_all()
        if kind == "item":
            return value
        self._done = True
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stops the background thread; later ``next`` calls raise StopIteration."""
        with self._cond:
            self._active = False
            self._done = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> PrefetchIterator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
