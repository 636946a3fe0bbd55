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

Peak memory. With a high trim threshold, memory that XLA's compiler frees stays in the
heap; and glibc gives every thread that allocates its own arena, whose free memory the
other threads cannot reuse. So ``keep_large_buffers`` also limits glibc to one arena
(every thread reuses the same free memory), and ``release_free_memory`` hands the heap's
free memory back to the kernel (``malloc_trim``): the example calls it after each
compilation (initialisation, the training step), whose temporaries (up to about 200 MB
for the training step here) would otherwise stay mapped and add up with the next one's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_large_buffers(mmap_threshold_mb: int = 256, trim_threshold_mb: int = 512,
                       arenas: int = 1) -> bool:
    """Serves allocations below ``mmap_threshold_mb`` from the heap, keeps up to
    ``trim_threshold_mb`` of freed memory for reuse, and uses at most ``arenas`` malloc
    arenas (0: glibc's default, 8 per core). Call it before JAX starts its threads (before
    the first operation). Returns True if glibc accepted every setting, False where this
    is not glibc (nothing is changed there)."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = [mallopt(M_MMAP_THRESHOLD, mmap_threshold_mb << 20),
          mallopt(M_TRIM_THRESHOLD, trim_threshold_mb << 20)]
    if arenas > 0:
        ok.append(mallopt(M_ARENA_MAX, arenas))
    return all(ok)


def release_free_memory() -> bool:
    """Returns the heap's free memory to the kernel (glibc's ``malloc_trim(0)``): after a
    compilation, whose temporaries are freed but would stay mapped. Memory in use is not
    touched, so results do not change. True if glibc released something."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    return bool(libc.malloc_trim(0))
