"""Reliability: checkpoint savers killed with SIGKILL at random moments lose nothing.

The driver (``kill_saver.py``) runs in a subprocess; see its docstring for the checks.
"""

import json
import os
import subprocess
import sys

import pytest

KILLS = 60


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkilled_savers_never_leave_a_broken_latest_checkpoint(tmp_path):
    driver = os.path.join(os.path.dirname(__file__), "kill_saver.py")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, driver, str(tmp_path), str(KILLS), "0"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.stdout.strip(), proc.stderr[-2000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["kills"] == KILLS
    assert stats["errors"] == [] and stats["lost"] == 0 and stats["mismatched"] == 0
    # Every round after the first save ended with a verified restore.
    assert stats["restores"] + stats["no_checkpoint_yet"] == KILLS
    assert stats["restores"] >= KILLS // 10  # every tenth round waits for a completed save
    assert stats["saves_completed"] >= KILLS // 10
    assert stats["kills_mid_write"] >= 1  # some kills left a partial temporary file
    assert proc.returncode == 0, proc.stderr[-2000:]
