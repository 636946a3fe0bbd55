"""Keeps XLA:CPU's per-call temporary buffer in the heap, instead of fresh pages each call.

XLA:CPU allocates the temporary buffer of a compiled call (for this example's training
step, about 45 MB: the activations the backward pass keeps) with ``malloc`` on every
call and frees it at the end. glibc serves an allocation that large with a fresh
``mmap`` and returns it with ``munmap``, so every call page-faults the whole buffer in
again and the kernel zero-fills it: about 12,000 minor faults and 20-25 ms of system time
per call here. Raising glibc's mmap threshold (and its trim threshold, so the freed
buffer is not handed back to the kernel at once) makes ``malloc`` reuse the same heap
memory on every call.

This is what ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...``
does from the environment; ``mallopt`` does it from inside the process, so the example
needs no wrapper and no re-exec. It changes no result, only where memory comes from.
On other C libraries (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3


def keep_large_buffers(mmap_threshold_mb: int = 256, trim_threshold_mb: int = 512) -> bool:
    """Serves allocations below ``mmap_threshold_mb`` from the heap and keeps up to
    ``trim_threshold_mb`` of freed memory for reuse. Returns True if glibc accepted both
    settings, False where this is not glibc (nothing is changed there)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok_mmap = mallopt(M_MMAP_THRESHOLD, mmap_threshold_mb << 20)
    ok_trim = mallopt(M_TRIM_THRESHOLD, trim_threshold_mb << 20)
    return bool(ok_mmap and ok_trim)
