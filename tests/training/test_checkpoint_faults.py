"""Checkpoints under concurrency and faults (issue #14, defects 1-3, 8 and 11)."""

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from flaxen.errors import (
    CheckpointError,
    CheckpointExistsError,
    CheckpointWriteError,
    SerializationError,
)
from flaxen.training import checkpoints

DRIVER = os.path.join(os.path.dirname(__file__), "race_drivers.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, JAX_PLATFORMS="cpu",
           PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
FOLLOW_SECONDS = 4.0


def _json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_follower_never_gets_the_template_while_a_checkpoint_exists(tmp_path):
    # Defect 1: the old listing skipped a file pruned between listdir and isfile, and
    # returned the template (or None from latest_checkpoint): 54 times in 26,179 restores.
    proc = subprocess.run([sys.executable, DRIVER, "follow", str(tmp_path / "d"),
                           str(FOLLOW_SECONDS)], capture_output=True, text=True, timeout=120,
                          env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = _json_line(proc.stdout)
    assert stats["restores"] >= 200 and stats["saves"] >= 20, stats  # the race really ran
    assert stats["errors"] == []
    assert stats["template_returned"] == 0 and stats["latest_none"] == 0
    assert stats["inconsistent"] == 0


def test_one_async_checkpointer_used_from_eight_threads_loses_nothing(tmp_path):
    # Defect 2: concurrent save() calls raised "cannot join thread before it is started"
    # or silently never wrote a step.
    ckpt = checkpoints.AsyncCheckpointer()
    errors = []

    def worker(t):
        try:
            for step in range(6):
                ckpt.save(tmp_path, {"w": np.full(3, 10 * t + step, np.float32)}, step,
                          prefix=f"t{t}_", keep=100)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ckpt.wait()
    assert errors == []
    for t in range(8):
        assert checkpoints.checkpoint_steps(tmp_path, prefix=f"t{t}_") == list(range(6))
        for step in range(6):
            back = checkpoints.restore_checkpoint(tmp_path, {"w": np.zeros(3, np.float32)},
                                                  step=step, prefix=f"t{t}_")
            np.testing.assert_array_equal(back["w"], np.full(3, 10 * t + step, np.float32))


def test_failed_async_write_is_raised_by_the_next_call(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_bytes(b"")
    ckpt = checkpoints.AsyncCheckpointer()
    ckpt.save(blocker / "sub", {"w": np.ones(2)}, 1)  # makedirs fails in the thread
    with pytest.raises(CheckpointWriteError, match="create the checkpoint directory"):
        ckpt.save(tmp_path / "ok", {"w": np.ones(2)}, 2)
    ckpt.save(tmp_path / "ok", {"w": np.ones(2)}, 2)  # reported once; then usable again
    ckpt.wait()
    assert checkpoints.checkpoint_steps(tmp_path / "ok") == [2]


def test_failed_async_write_without_wait_is_reported_at_exit(tmp_path):
    # Defect 3: the program ended with status 0 and no trace of the lost save.
    script = textwrap.dedent(f"""
        import numpy as np
        from flaxen.training import checkpoints
        blocker = {str(tmp_path / "a_file")!r}
        open(blocker, "w").close()
        ckpt = checkpoints.AsyncCheckpointer()
        ckpt.save(blocker + "/sub", {{"w": np.ones(2)}}, 7)
        print("main finished")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=ENV)
    assert "main finished" in proc.stdout
    assert proc.returncode == 1
    assert "FAILED" in proc.stderr and "a_file/sub/checkpoint_7" in proc.stderr
    assert "CheckpointWriteError" in proc.stderr


def test_successful_async_writes_exit_cleanly(tmp_path):
    script = textwrap.dedent(f"""
        import numpy as np
        from flaxen.training import checkpoints
        checkpoints.AsyncCheckpointer().save({str(tmp_path)!r}, {{"w": np.ones(2)}}, 3)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert checkpoints.checkpoint_steps(tmp_path) == [3]  # the write finished before exit


def test_two_processes_saving_the_same_steps_exactly_one_wins(tmp_path):
    # Defect 8: with a check-then-rename both were told "saved" for 53 of 60 steps.
    steps, go = 30, tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, DRIVER, "same_steps", str(tmp_path / "d"),
                               str(steps), str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    go.write_bytes(b"")
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
        results.append(_json_line(out)["outcome"])
    for step in range(steps):
        assert sorted([results[0][step], results[1][step]]) == ["exists", "saved"], step
    assert checkpoints.checkpoint_steps(tmp_path / "d") == list(range(steps))


def test_exists_check_uses_link_semantics(tmp_path, monkeypatch):
    # The file appearing between the listing and the move (another process) is detected.
    real_scan = checkpoints.files.scan

    def blind_scan(ckpt_dir, prefix):  # a listing made before the other save finished
        return [], real_scan(ckpt_dir, prefix)[1]

    checkpoints.save_checkpoint(tmp_path, {"w": np.ones(2)}, 5)
    monkeypatch.setattr(checkpoints.files, "scan", blind_scan)
    with pytest.raises(CheckpointExistsError, match="checkpoint_5"):
        checkpoints.save_checkpoint(tmp_path, {"w": np.zeros(2)}, 5)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_5"]  # no temporary file left
    back = checkpoints.restore_checkpoint(tmp_path, {"w": np.zeros(2)})
    np.testing.assert_array_equal(back["w"], np.ones(2))  # the first save is kept


def test_read_only_file_system_message_and_no_stray_warning(tmp_path, monkeypatch, caplog):
    # Defect 11: a warning about removing a temporary file that was never created, and
    # "free space" advice for a read-only disk.
    checkpoints.save_checkpoint(tmp_path, {"w": np.ones(2)}, 1)
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(checkpoints.os, "open", read_only_open)
    with caplog.at_level(logging.WARNING):
        with pytest.raises(CheckpointWriteError) as info:
            checkpoints.save_checkpoint(tmp_path, {"w": np.ones(2)}, 2)
    monkeypatch.undo()
    message = str(info.value)
    assert "read-only" in message and "writable" in message
    assert "Free space" not in message and "free space" not in message
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_1"]


def test_disk_full_still_advises_free_space(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.os, "write", full)
    with pytest.raises(CheckpointWriteError, match="disk is full.*Free space"):
        checkpoints.save_checkpoint(tmp_path, {"w": np.ones(2)}, 1)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []  # the partial temporary file was removed


def test_loaders_refuse_files_above_max_bytes(tmp_path):
    path = checkpoints.save_checkpoint(tmp_path, {"w": np.zeros(1000, np.float32)}, 1)
    with pytest.raises(CheckpointError, match="above the limit.*max_bytes"):
        checkpoints.restore_checkpoint(tmp_path, None, max_bytes=1000)
    assert checkpoints.restore_checkpoint(path, None, max_bytes=os.path.getsize(path))[
        "w"].shape == (1000,)
    assert checkpoints.MAX_FILE_BYTES >= 2**30


def test_large_damaged_file_is_refused_before_it_is_read_whole(tmp_path, monkeypatch):
    # Above STREAM_CHECK_BYTES the checksum is verified in pieces before the file is read
    # into memory; the threshold is lowered here instead of writing 256 MiB.
    checkpoints.save_checkpoint(tmp_path, {"w": np.arange(1000, dtype=np.float32)}, 1)
    monkeypatch.setattr(checkpoints.files, "STREAM_CHECK_BYTES", 0)
    back = checkpoints.restore_checkpoint(tmp_path, {"w": np.zeros(1000, np.float32)})
    np.testing.assert_array_equal(back["w"], np.arange(1000, dtype=np.float32))
    data = bytearray((tmp_path / "checkpoint_1").read_bytes())
    data[len(data) // 2] ^= 1
    (tmp_path / "checkpoint_1").write_bytes(bytes(data))

    def never(*args):
        raise AssertionError("the damaged file was read whole")

    monkeypatch.setattr(checkpoints.files, "read_file", never)
    with pytest.raises(SerializationError, match="checkpoint_1.*checksum mismatch"):
        checkpoints.restore_checkpoint(tmp_path, {"w": np.zeros(1000, np.float32)})
