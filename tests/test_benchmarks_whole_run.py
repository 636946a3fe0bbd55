"""benchmarks.lm._whole_run: a command's own peak memory, CPU time and JSON summary."""

from __future__ import annotations

import os
import sys

import numpy as np

from benchmarks import lm

CHILD = """
import json
import numpy as np
block = np.ones(150 * 2**20 // 8)  # 150 MiB, touched
print("training...")
print(json.dumps({"heldout": 1.5, "sum": float(block.sum())}))
"""


def test_whole_run_reports_the_commands_own_peak_not_the_parents():
    parent_block = np.ones(600 * 2**20 // 8)  # this process peaks well above the child
    parent_block += 1
    result = lm._whole_run([sys.executable, "-c", CHILD], dict(os.environ))
    # Without the launcher, Linux would report at least this process's 600 MiB peak.
    assert 150 <= result["rss_mb"] < 450, result
    assert result["heldout"] == 1.5 and result["sum"] == 150 * 2**20 // 8
    assert result["cpu_s"] > 0 and result["wall_s"] >= result["cpu_s"] * 0.5


def test_whole_run_raises_with_the_output_when_the_command_fails():
    try:
        lm._whole_run([sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
                      dict(os.environ))
    except RuntimeError as e:
        assert "exited with 3" in str(e) and "boom" in str(e)
    else:
        raise AssertionError("a failing command must raise")
