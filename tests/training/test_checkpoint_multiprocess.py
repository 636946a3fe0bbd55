"""Two processes on loopback (jax.distributed): save gathers and writes once, restore places.

Marked slow: it starts two Python processes that each import JAX (about 10 s).
"""

import os

import pytest

from tests import multiprocess_util as mp


@pytest.mark.slow
def test_two_process_save_and_sharded_restore(tmp_path):
    worker = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")
    ckpt_dir = str(tmp_path / "ckpt")
    results = mp.run([worker], 2, 2, tmp_path / "logs", timeout=120,
                     process_args=lambda i, n, port: [str(i), str(port), ckpt_dir])
    mp.check_all_ok(results)
    for i, result in enumerate(results):
        assert f"RESULT process={i} files=['checkpoint_1'] ok=True" in result.output, \
            result.output[-3000:]
