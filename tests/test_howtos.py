"""Every HOWTO diff in docs/howtos/ still applies to its example and the result still trains.

Each diff is applied with ``git apply`` to a fresh copy of the repository's ``examples/``
folder, and the patched example trains for one short epoch in a subprocess (so the patched
copy, not the installed one, is what runs).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flaxen import metrics

REPO = Path(__file__).resolve().parents[1]
HOWTOS = sorted((REPO / "docs" / "howtos").glob("*.diff"))


def write_small_idx_dir(folder: Path, n_train: int = 512, n_test: int = 128) -> None:
    """Four IDX files of a learnable synthetic set (the test checks that a HOWTO applies and
    trains, not what it reaches): class k is a bright bar at row 2k."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n_train + n_test).astype(np.uint8)
    images = np.zeros((n_train + n_test, 28, 28), np.uint8)
    for i, k in enumerate(labels):
        images[i, 2 * k:2 * k + 6, 4:24] = 255
    folder.mkdir(parents=True)
    for prefix, sl in (("train", slice(0, n_train)), ("t10k", slice(-n_test, None))):
        for kind, arr in (("images-idx3", images[sl]), ("labels-idx1", labels[sl])):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(
                int(d).to_bytes(4, "big") for d in arr.shape)
            (folder / f"{prefix}-{kind}-ubyte").write_bytes(header + arr.tobytes())


def test_there_are_howtos():
    assert [p.name for p in HOWTOS] == ["polyak_averaging.diff"]
    for diff in HOWTOS:
        assert diff.with_suffix(".md").is_file(), f"{diff.name} needs a page"


@pytest.mark.parametrize("diff", HOWTOS, ids=[p.stem for p in HOWTOS])
def test_howto_applies_and_trains(diff, tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    work = tmp_path / "repo"
    shutil.copytree(REPO / "examples", work / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(["git", "apply", "--verbose", str(diff)], cwd=work,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"{diff.name} no longer applies:\n{result.stderr}"
    changed = [line.split(" b/")[-1] for line in diff.read_text().splitlines()
               if line.startswith("diff --git")]
    example = work / Path(changed[0]).parent
    data, out = tmp_path / "data", tmp_path / "out"
    write_small_idx_dir(data)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    cmd = [sys.executable, "train.py", "--dataset=idx", f"--data_dir={data}",
           f"--output_dir={out}", "--num_epochs=1", "--batch_size=64", "--noprogress"]
    result = subprocess.run(cmd, cwd=example, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = metrics.read_jsonl(out / "metrics.jsonl")
    assert len(rows) == 1 and rows[0]["test_accuracy"] > 0.2, rows
    if diff.stem == "polyak_averaging":
        assert "polyak eval epoch: 1" in result.stderr
        assert 0.0 <= rows[0]["polyak_test_accuracy"] <= 1.0
