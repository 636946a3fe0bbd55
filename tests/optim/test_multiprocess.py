"""Data-parallel training across 2 processes on loopback (jax.distributed, gloo on CPU)."""

from pathlib import Path

import pytest

from tests import multiprocess_util as mp


@pytest.mark.slow
def test_two_processes_train_like_one_device(tmp_path):
    worker = str(Path(__file__).with_name("mp_worker.py"))
    results = mp.run([worker], 2, 2, tmp_path / "logs", timeout=240,
                     process_args=mp.positional_args)
    mp.check_all_ok(results)
    for i, result in enumerate(results):
        assert f"process {i}: OK" in result.output, result.output[-3000:]
