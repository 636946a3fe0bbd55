"""Drivers for the concurrency tests (run as subprocesses; each prints one JSON line).

``python race_drivers.py follow DIR SECONDS``: a forked saver loops
``save_checkpoint(DIR, tree(s), s, keep=1)`` while this process loops
``restore_checkpoint(DIR, template)`` and ``latest_checkpoint(DIR)``; counts how often the
template (or None) came back although a complete checkpoint existed, and how often a
restored checkpoint was inconsistent.

``python race_drivers.py same_steps DIR STEPS GO_FILE``: saves steps ``0..STEPS-1`` with
``overwrite=False`` once GO_FILE exists; prints the outcome of every step (``"saved"`` or
``"exists"``). Two of these racing must never both report ``"saved"`` for a step.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np

from flaxen.errors import CheckpointExistsError
from flaxen.training import checkpoints


def tree(step: int) -> dict:
    return {"w": np.full((64,), step, np.float32), "step": step}


def follow(ckpt_dir: str, seconds: float) -> dict:
    checkpoints.save_checkpoint(ckpt_dir, tree(0), 0, keep=1)
    pid = os.fork()
    if pid == 0:  # the saver
        try:
            step = 1
            while True:
                checkpoints.save_checkpoint(ckpt_dir, tree(step), step, keep=1)
                step += 1
        finally:
            os._exit(1)
    template = {"w": np.zeros((64,), np.float32), "step": -1}
    stats = {"restores": 0, "template_returned": 0, "latest_calls": 0, "latest_none": 0,
             "inconsistent": 0, "errors": []}
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            try:
                restored = checkpoints.restore_checkpoint(ckpt_dir, template)
            except Exception as e:  # noqa: BLE001 - every failure is counted
                stats["errors"].append(f"{type(e).__name__}: {e}"[:200])
                continue
            stats["restores"] += 1
            if restored is template:
                stats["template_returned"] += 1
            elif not np.all(restored["w"] == restored["step"]):
                stats["inconsistent"] += 1
            stats["latest_calls"] += 1
            stats["latest_none"] += checkpoints.latest_checkpoint(ckpt_dir) is None
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    stats["saves"] = checkpoints.checkpoint_steps(ckpt_dir)[-1]
    return stats


def same_steps(ckpt_dir: str, steps: int, go_file: str) -> dict:
    while not os.path.exists(go_file):
        time.sleep(0.001)
    outcome = []
    for step in range(steps):
        try:
            checkpoints.save_checkpoint(ckpt_dir, tree(step), step, keep=steps + 1)
            outcome.append("saved")
        except CheckpointExistsError:
            outcome.append("exists")
    return {"pid": os.getpid(), "outcome": outcome}


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "follow":
        print(json.dumps(follow(sys.argv[2], float(sys.argv[3]))))
    else:
        print(json.dumps(same_steps(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
