"""Two processes x two simulated CPU devices on 127.0.0.1 train like one process (slow)."""

import jax
import numpy as np
import pytest

from examples.segmentation.train_test import data_folder
from flaxen import metrics
from tests import multiprocess_util as mp


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    """2 processes x 2 simulated devices on 127.0.0.1 give the single-process result."""
    data = data_folder(tmp_path)
    common = ["examples/segmentation/train.py", f"--data_dir={data}", "--num_epochs=1",
              "--num_train_canvases=64", "--num_test_canvases=40", "--batch_size=16",
              f"--cache_dir={tmp_path / 'cache'}", "--noprogress"]
    results = mp.run(common + [f"--output_dir={tmp_path / 'multi'}"], 2, 2,
                     tmp_path / "logs", timeout=600)
    mp.check_all_ok(results)
    single = mp.run_single(common + [f"--output_dir={tmp_path / 'single'}", "--num_devices=1"],
                           2, tmp_path / "logs", timeout=600)
    mp.check_all_ok([single])
    assert "Data-parallel over 4 devices (2 processes)" in results[0].output
    multi = [r for r in metrics.read_jsonl(tmp_path / "multi" / "metrics.jsonl") if "epoch" in r]
    one = [r for r in metrics.read_jsonl(tmp_path / "single" / "metrics.jsonl") if "epoch" in r]
    assert multi[0]["test_loss"] == pytest.approx(one[0]["test_loss"], rel=1e-3)
    assert multi[0]["test_mean_iou"] == pytest.approx(one[0]["test_mean_iou"], abs=0.01)
    from flaxen.training import checkpoints

    a = checkpoints.restore_checkpoint(tmp_path / "multi" / "checkpoints", None)
    b = checkpoints.restore_checkpoint(tmp_path / "single" / "checkpoints", None)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4), a, b)
