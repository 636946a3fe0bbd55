"""Two processes x two simulated CPU devices on 127.0.0.1 train like one process (slow)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from examples.segmentation.train_test import source_folder
from flaxen import metrics

HERE = Path(__file__).resolve().parent


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    """2 processes x 2 simulated devices on 127.0.0.1 give the single-process result."""
    folder = source_folder()
    data = tmp_path / "data"
    data.mkdir()
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (data / (stem + ".gz")).symlink_to(folder / (stem + ".gz"))
        (data / (stem.replace("t10k", "train") + ".gz")).symlink_to(folder / (stem + ".gz"))
    common = [sys.executable, str(HERE / "train.py"), f"--data_dir={data}", "--num_epochs=1",
              "--num_train_canvases=64", "--num_test_canvases=40", "--batch_size=16",
              f"--cache_dir={tmp_path / 'cache'}", "--noprogress"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(HERE.parents[1]),
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    port = _free_port()
    procs = [subprocess.Popen(common + [f"--output_dir={tmp_path / 'multi'}",
                                        f"--coordinator_address=127.0.0.1:{port}",
                                        "--num_processes=2", f"--process_id={i}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    single = subprocess.run(common + [f"--output_dir={tmp_path / 'single'}", "--num_devices=1"],
                            env=env, capture_output=True, text=True, timeout=600)
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=600)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-3000:]}"
    assert single.returncode == 0, single.stderr[-3000:]
    assert "Data-parallel over 4 devices (2 processes)" in outs[0]
    multi = [r for r in metrics.read_jsonl(tmp_path / "multi" / "metrics.jsonl") if "epoch" in r]
    one = [r for r in metrics.read_jsonl(tmp_path / "single" / "metrics.jsonl") if "epoch" in r]
    assert multi[0]["test_loss"] == pytest.approx(one[0]["test_loss"], rel=1e-3)
    assert multi[0]["test_mean_iou"] == pytest.approx(one[0]["test_mean_iou"], abs=0.01)
    from flaxen.training import checkpoints

    a = checkpoints.restore_checkpoint(tmp_path / "multi" / "checkpoints", None)
    b = checkpoints.restore_checkpoint(tmp_path / "single" / "checkpoints", None)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4), a, b)
