"""Kill test driver: checkpoint savers killed with SIGKILL at random moments.

Run as ``python kill_saver.py CKPT_DIR KILLS SEED``. It imports flaxen once, then for each
round forks a saver that resumes from the latest checkpoint and saves steps in a loop
(reporting each completed save through a pipe), sleeps a random time, SIGKILLs it, and
checks from this (separate) process that:

* the latest checkpoint restores (strictly, against the expected tree) and equals what
  was saved at that step, bit for bit;
* no save that completed before the kill was lost (the latest step on disk is at least
  the last step the saver reported as complete);
* only complete checkpoints are ever listed (temporary files never are).

Prints one JSON line with the counts. Exit status 0 when nothing was lost or mismatched.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import sys
import time

import ml_dtypes
import numpy as np

from flaxen.training import checkpoints


def expected_tree(step: int) -> dict:
    """What the saver writes at ``step``: sizes vary so that writes take varying time."""
    n = 20000 + (step * 7919) % 400000
    return {
        "params": {"w": np.full((n,), step, np.float32),
                   "b": (np.arange(7, dtype=np.float32) * step).astype(ml_dtypes.bfloat16)},
        "step": step,
        "name": f"s{step}",
        "empty": np.zeros((0, 3), np.int8),
    }


def saver(ckpt_dir: str, report_fd: int) -> None:
    steps = checkpoints.checkpoint_steps(ckpt_dir)
    step = steps[-1] + 1 if steps else 0
    while True:
        checkpoints.save_checkpoint(ckpt_dir, expected_tree(step), step, keep=2)
        os.write(report_fd, f"{step}\n".encode())
        step += 1


def main() -> int:
    ckpt_dir, kills, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rnd = random.Random(seed)
    stats = {"kills": 0, "restores": 0, "lost": 0, "mismatched": 0, "errors": [],
             "saves_completed": 0, "kills_mid_write": 0, "no_checkpoint_yet": 0}
    start = time.monotonic()
    for round_index in range(kills):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the saver
            os.close(read_fd)
            try:
                saver(ckpt_dir, write_fd)
            finally:
                os._exit(1)
        os.close(write_fd)
        reported = b""
        if round_index % 10 == 9:
            # Every tenth round waits for one completed save first, so that the test makes
            # progress even on a heavily loaded machine where saves are slow.
            ready, _, _ = select.select([read_fd], [], [], 5.0)
            if ready:
                reported += os.read(read_fd, 65536)
        # A third of the kills come early (during start-up and the first save, even the
        # first save ever), the others anywhere in the first few saves.
        time.sleep(rnd.choice([rnd.uniform(0, 0.01), rnd.uniform(0.01, 0.15),
                               rnd.uniform(0.01, 0.15)]))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        stats["kills"] += 1
        while chunk := os.read(read_fd, 65536):
            reported += chunk
        os.close(read_fd)
        done = [int(s) for s in reported.split()]
        stats["saves_completed"] += len(done)
        # A temporary file of the killed saver: the kill hit the middle of a write.
        stats["kills_mid_write"] += any(".flaxen-tmp-" in n and f"-{pid}-" in n
                                        for n in os.listdir(ckpt_dir))
        latest = checkpoints.latest_checkpoint(ckpt_dir)
        if latest is None:
            stats["no_checkpoint_yet"] += 1
            if done:
                stats["lost"] += 1
            continue
        step = int(os.path.basename(latest)[len("checkpoint_"):])
        if done and step < done[-1]:
            stats["lost"] += 1
        try:
            restored = checkpoints.restore_checkpoint(ckpt_dir, expected_tree(step), step=step)
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            stats["errors"].append(f"step {step}: {type(e).__name__}: {e}"[:300])
            continue
        stats["restores"] += 1
        want = expected_tree(step)
        same = (restored["step"] == want["step"] and restored["name"] == want["name"]
                and all(np.array_equal(np.asarray(restored["params"][k]).view(np.uint8),
                                       want["params"][k].view(np.uint8))
                        for k in ("w", "b")))
        stats["mismatched"] += not same
    stats["seconds"] = round(time.monotonic() - start, 2)
    stats["final_steps"] = checkpoints.checkpoint_steps(ckpt_dir)
    print(json.dumps(stats))
    return 0 if not (stats["lost"] or stats["mismatched"] or stats["errors"]) else 1


if __name__ == "__main__":
    sys.exit(main())
