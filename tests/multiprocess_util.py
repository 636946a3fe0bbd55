"""Launching a program as several JAX processes on this machine (loopback), for tests.

Each process gets its own simulated CPU devices (``--xla_force_host_platform_device_count``)
and JAX's CPU collectives (gloo, the default in JAX 0.10); the processes find each other
through a coordinator on ``127.0.0.1`` at a free port. The one launcher of the repository:
used by every example's multi-process test and by the library's own (whose small worker
scripts take ``PROCESS_ID PORT`` as positional arguments; see ``process_args``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(devices: int, **extra: str) -> dict[str, str]:
    """The environment of one process: ``devices`` simulated CPU devices, the repository on
    ``PYTHONPATH``, unbuffered output (so a killed process's last lines are not lost)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    path = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", PYTHONPATH=path)
    env.update(extra)
    return env


@dataclass
class Result:
    returncode: int
    output: str  # stdout and stderr together


def distributed_flags(process_id: int, num_processes: int, port: int) -> list[str]:
    """The examples' flags: ``--coordinator_address --num_processes --process_id``."""
    return [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
            f"--process_id={process_id}"]


def positional_args(process_id: int, num_processes: int, port: int) -> list[str]:
    """``PROCESS_ID PORT``, as the library tests' worker scripts take them."""
    return [str(process_id), str(port)]


ProcessArgs = Callable[[int, int, int], Sequence[str]]  # (process_id, num_processes, port)


def start(argv: Sequence[str], num_processes: int, devices_per_process: int, log_dir: Path,
          port: int | None = None, process_args: ProcessArgs = distributed_flags,
          **extra_env: str) -> list[subprocess.Popen]:
    """Starts ``python argv... process_args(i, num_processes, port)`` once per process (by
    default the examples' distributed flags); each writes its output to
    ``log_dir/process_<i>.log``."""
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(num_processes):
        log = open(log_dir / f"process_{i}.log", "w")  # closed when the child has it
        procs.append(subprocess.Popen(
            [sys.executable, *argv, *process_args(i, num_processes, port)],
            cwd=REPO, env=cpu_env(devices_per_process, **extra_env), stdout=log,
            stderr=subprocess.STDOUT, text=True))
        log.close()
    return procs


def wait(procs: Sequence[subprocess.Popen], log_dir: Path, timeout: float) -> list[Result]:
    """Waits for every process (killing all of them after ``timeout`` seconds in all)."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [Result(p.returncode, (log_dir / f"process_{i}.log").read_text())
            for i, p in enumerate(procs)]


def run(argv: Sequence[str], num_processes: int, devices_per_process: int, log_dir: Path,
        timeout: float = 300, process_args: ProcessArgs = distributed_flags,
        **extra_env: str) -> list[Result]:
    """:func:`start`, then :func:`wait`."""
    procs = start(argv, num_processes, devices_per_process, log_dir,
                  process_args=process_args, **extra_env)
    return wait(procs, log_dir, timeout)


def run_single(argv: Sequence[str], devices: int, log_dir: Path,
               timeout: float = 300, **extra_env: str) -> Result:
    """``python argv...`` as one plain process (no distributed flags) with ``devices``
    simulated CPU devices: the reference a multi-process run is compared with."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "single.log", "w") as log:
        p = subprocess.Popen([sys.executable, *argv], cwd=REPO,
                             env=cpu_env(devices, **extra_env), stdout=log,
                             stderr=subprocess.STDOUT, text=True)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    return Result(p.returncode, (log_dir / "single.log").read_text())


def check_all_ok(results: Sequence[Result]) -> None:
    """Fails with the tail of each failed process's output."""
    bad = [(i, r) for i, r in enumerate(results) if r.returncode != 0]
    assert not bad, "\n".join(f"process {i} exited {r.returncode}:\n{r.output[-3000:]}"
                              for i, r in bad)
