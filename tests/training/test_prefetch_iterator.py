"""flaxen.training.prefetch_iterator.PrefetchIterator."""

import threading
import time

import pytest

from flaxen.errors import FlaxenError
from flaxen.training.prefetch_iterator import PrefetchIterator


def test_order_and_read_ahead():
    pulled = []

    def source():
        for i in range(6):
            pulled.append(i)
            yield i

    with PrefetchIterator(source(), buffer_size=3) as it:
        deadline = time.monotonic() + 30  # generous: the machine may be loaded
        while len(pulled) < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.02)
        assert len(pulled) == 3  # read ahead, but never beyond the buffer
        assert list(it) == list(range(6))
        with pytest.raises(StopIteration):
            next(it)


def test_source_exception_is_reraised_in_order():
    def source():
        yield 1
        raise KeyError("boom")

    it = PrefetchIterator(source())
    assert next(it) == 1
    with pytest.raises(KeyError, match="boom"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_close_stops_the_thread():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    before = threading.active_count()
    it = PrefetchIterator(endless(), buffer_size=2)
    assert next(it) == 0
    it.close()
    assert not it._thread.is_alive()
    assert threading.active_count() == before
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(FlaxenError, match="buffer_size"):
        PrefetchIterator(iter([]), buffer_size=0)
