"""Two processes on loopback (jax.distributed): save gathers and writes once, restore places.

Marked slow: it starts two Python processes that each import JAX (about 10 s).
"""

import os
import socket
import subprocess
import sys

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_save_and_sharded_restore(tmp_path):
    worker = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")
    port = str(_free_port())
    ckpt_dir = str(tmp_path / "ckpt")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, worker, str(i), port, ckpt_dir], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, out[-3000:]
        assert f"RESULT process={i} files=['checkpoint_1'] ok=True" in out, out[-3000:]
