"""``AsyncWriter``: a metric writer on a background thread, so a training step never waits
for PNG encoding, checksums or the disk.

Values are fetched to host memory on the calling thread (so a buffer donated or deleted by
the next step is safe); everything after that runs on one background thread, in call order.
An error there (a bad image shape, a full disk) is raised by the next call on the writer.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from flaxen.metrics.images import SummaryError
from flaxen.metrics.writers import MetricWriter


def _to_host(values: Mapping[str, Any]) -> dict[str, Any]:
    """JAX arrays to NumPy (blocks for the transfer only); other values as they are."""
    return {k: np.asarray(v) if isinstance(v, jax.Array) else v for k, v in values.items()}


class AsyncWriter:
    """Runs another writer's calls on a background thread, in order.

    Args:
      writer: the writer to wrap (a ``MultiWriter``, ``SummaryWriter``, ...).
      max_pending: at most this many calls wait in the queue; a further call blocks until
        one is done, so a slow disk slows training instead of filling memory.

    ``flush()`` waits until every pending call is written, then flushes the writer;
    ``close()`` does that and closes it. An exception raised on the background thread is
    raised again (with a note naming the call) by the next ``write_*``, ``flush`` or
    ``close``; the calls queued after it still run.
    """

    def __init__(self, writer: MetricWriter, *, max_pending: int = 16):
        self.writer = writer
        self._queue: queue.Queue[tuple[Callable[[], None], str] | None] = queue.Queue(
            max_pending)
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="flaxen-AsyncWriter",
                                        daemon=True)
        self._thread.start()
        atexit.register(self._drain)  # a run that forgets close() still writes everything

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                call, what = item
                try:
                    call()
                except BaseException as e:  # kept for the caller's thread
                    e.add_note(f"(raised on AsyncWriter's background thread by {what})")
                    with self._lock:
                        self._errors.append(e)
            finally:
                self._queue.task_done()

    def _raise_pending(self) -> None:
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise errors[0]

    def _submit(self, call: Callable[[], None], what: str) -> None:
        if self._closed:
            raise SummaryError("AsyncWriter is closed.")
        self._raise_pending()
        self._queue.put((call, what))

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        values = _to_host(scalars)
        self._submit(lambda: self.writer.write_scalars(step, values), f"write_scalars({step})")

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        values = _to_host(images)
        self._submit(lambda: self.writer.write_images(step, values), f"write_images({step})")

    def write_histograms(self, step: int, arrays: Mapping[str, Any],
                         num_buckets: int | Mapping[str, int] | None = None) -> None:
        values = _to_host(arrays)
        self._submit(lambda: self.writer.write_histograms(step, values, num_buckets),
                     f"write_histograms({step})")

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        values = dict(texts)
        self._submit(lambda: self.writer.write_texts(step, values), f"write_texts({step})")

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        values = dict(hparams)
        self._submit(lambda: self.writer.write_hparams(values), "write_hparams")

    def flush(self) -> None:
        """Waits for every pending call, flushes the writer, raises a background error."""
        if not self._closed:
            self._queue.join()
            self.writer.flush()
        self._raise_pending()

    def _drain(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.join()
            self._queue.put(None)
            self._thread.join()

    def close(self) -> None:
        """Writes everything pending, stops the thread and closes the writer."""
        if not self._closed:
            self._drain()
            atexit.unregister(self._drain)
            self.writer.close()
        self._raise_pending()

    def __enter__(self) -> AsyncWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
