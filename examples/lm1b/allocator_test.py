"""allocator.py: glibc keeps a large freed buffer for reuse, and hands it back on request.

Run in a fresh process: the settings are process-wide and must come before the threads
that allocate."""

import os
import platform
import subprocess
import sys

import pytest

CODE = r'''
import numpy as np
from examples.lm1b import allocator

def anon_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

assert allocator.keep_large_buffers()
before = anon_mib()
block = np.ones(100 << 20, np.uint8)  # 100 MiB from malloc, below the 256 MB threshold
del block
kept = anon_mib() - before          # freed, but kept in the heap for the next call
assert allocator.release_free_memory()
released = anon_mib() - before      # handed back to the kernel
print(round(kept), round(released))
'''


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the malloc settings are glibc's")
def test_large_freed_buffer_is_kept_then_released():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         timeout=120, cwd=repo, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    kept, released = map(int, out.stdout.split())
    assert kept >= 95, out.stdout  # without mallopt glibc would munmap it at once (~0)
    assert released <= 5, out.stdout
