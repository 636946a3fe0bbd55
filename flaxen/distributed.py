"""Running one program on several processes (hosts) with JAX's own distributed runtime.

Every process runs the same script. :func:`initialize` connects them (``jax.distributed``)
before anything touches a device; afterwards ``jax.devices()`` lists the devices of every
process, a ``Mesh`` over them (``parallel.default_mesh()``) spans all hosts, and each process
feeds only its own rows of every global batch (:func:`local_rows`,
``parallel.shard_batch``). See docs/multihost.md.

Failure: JAX's coordination service expects a heartbeat from every process; a process that
has sent none for ``heartbeat_timeout_s`` seconds is declared dead and every other process
is terminated with ``Terminating process because the JAX distributed service detected fatal
errors`` (exit status 134, SIGABRT). So a killed or hung host stops the whole job within
about ``heartbeat_timeout_s`` (plus up to 10 s of polling), instead of hanging in a
collective. Restart it with ``--resume``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax

from flaxen.errors import DistributedConfigError

# Seconds without a heartbeat after which a process counts as dead (JAX's default is 100).
DEFAULT_HEARTBEAT_TIMEOUT_S = 30
# Seconds the processes wait for each other at start-up (JAX's default is 300).
DEFAULT_INITIALIZATION_TIMEOUT_S = 300

_HOST_PORT = re.compile(r"^\[?[A-Za-z0-9_.:\-]+\]?:\d{1,5}$")


def cluster_detected() -> str | None:
    """The name of a multi-process launcher found in the environment, or None.

    Recognised: ``JAX_COORDINATOR_ADDRESS`` (with JAX's own variables), SLURM with more than
    one task, Open MPI with more than one rank, and ``FLAXEN_DISTRIBUTED=1`` (let JAX
    auto-detect, e.g. on a Cloud TPU pod slice).
    """
    env = os.environ
    if env.get("FLAXEN_DISTRIBUTED") == "1":
        return "FLAXEN_DISTRIBUTED=1"
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    if "SLURM_JOB_ID" in env and "SLURM_STEP_NODELIST" in env and \
            int(env.get("SLURM_NTASKS", "1")) > 1:
        return "SLURM"
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "Open MPI"
    return None


def _timeout(env_name: str, default: int) -> int:
    raw = os.environ.get(env_name, "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise DistributedConfigError(f"{env_name}={raw!r}: expected a whole number of seconds "
                                     ">= 1.")
    return int(raw)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, heartbeat_timeout_s: int | None = None,
               initialization_timeout_s: int | None = None) -> bool:
    """Connects this process to the others (``jax.distributed.initialize``), if there are any.

    Give all three of ``coordinator_address``, ``num_processes`` and ``process_id``, or none.
    With none, JAX is initialised only when :func:`cluster_detected` finds a launcher (SLURM,
    Open MPI, ``JAX_COORDINATOR_ADDRESS``); otherwise this is a single-process run and
    nothing happens. Must run before anything touches a device (``jax.devices()``, creating
    an array, ``jax.process_index()``).

    Args:
      coordinator_address: ``HOST:PORT`` of process 0, reachable from every process; the
        same on every process.
      num_processes: the number of processes, the same on every process.
      process_id: this process, ``0 <= process_id < num_processes``; process 0 hosts the
        coordinator.
      heartbeat_timeout_s: seconds without a heartbeat after which a process counts as dead
        and the others stop. Default ``$FLAXEN_HEARTBEAT_TIMEOUT_S`` or 30.
      initialization_timeout_s: seconds to wait for every process to connect. Default
        ``$FLAXEN_INIT_TIMEOUT_S`` or 300.

    Returns:
      True if ``jax.distributed`` was initialised, False for a plain single-process run.

    Raises:
      DistributedConfigError: only some of the three given, or values out of range.
    """
    given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
             "--process_id": process_id}
    missing = [k for k, v in given.items() if v is None]
    if 0 < len(missing) < 3:
        present = [k for k in given if k not in missing]
        raise DistributedConfigError(
            f"{', '.join(present)} given without {', '.join(missing)}: a multi-process run "
            "needs all three (--coordinator_address=HOST:PORT --num_processes=N "
            "--process_id=I), a single-process run none.")
    heartbeat = heartbeat_timeout_s or _timeout("FLAXEN_HEARTBEAT_TIMEOUT_S",
                                                DEFAULT_HEARTBEAT_TIMEOUT_S)
    init_timeout = initialization_timeout_s or _timeout("FLAXEN_INIT_TIMEOUT_S",
                                                        DEFAULT_INITIALIZATION_TIMEOUT_S)
    # The shutdown timeout stays JAX's (300 s): at exit, a process waits that long for the
    # others, e.g. for process 0 writing plots and samples that the others skip.
    timeouts: dict[str, Any] = dict(heartbeat_timeout_seconds=heartbeat,
                                    initialization_timeout=init_timeout)
    if not missing:
        assert num_processes is not None and process_id is not None  # for type checkers
        if not _HOST_PORT.match(str(coordinator_address)):
            raise DistributedConfigError(
                f"--coordinator_address={coordinator_address!r}: expected HOST:PORT of process "
                "0, e.g. 10.0.0.1:1234.")
        if num_processes < 1:
            raise DistributedConfigError(f"--num_processes={num_processes}: expected >= 1.")
        if not 0 <= process_id < num_processes:
            raise DistributedConfigError(
                f"--process_id={process_id}: expected 0..{num_processes - 1} for "
                f"--num_processes={num_processes}.")
        jax.distributed.initialize(coordinator_address, num_processes, process_id, **timeouts)
        return True
    if cluster_detected() is None:
        return False
    jax.distributed.initialize(**timeouts)
    return True


def local_rows(global_batch_size: int, mesh: jax.sharding.Mesh | None,
               axis_name: str = "batch") -> slice:
    """The rows of every global batch that this process feeds (and reads from disk).

    With the batch split along ``axis_name`` of ``mesh``, process ``p`` holds the rows of
    its own devices: one contiguous block. Each process reads only those rows, so the
    processes together read every row of the global batch exactly once.

    Args:
      global_batch_size: rows in one global batch (all processes together).
      mesh: the mesh the batch is split over (None: one device, all rows).
      axis_name: the mesh axis carrying the batch.

    Returns:
      ``slice(start, stop)`` into the global batch.

    Raises:
      DistributedConfigError: ``global_batch_size`` is not a multiple of the mesh size along
        ``axis_name``.
    """
    if mesh is None:
        return slice(0, global_batch_size)
    devices = mesh.shape[axis_name]
    if global_batch_size % devices:
        suggestion = max(devices, global_batch_size // devices * devices)
        raise DistributedConfigError(
            f"--batch_size={global_batch_size} must be a multiple of the {devices} devices "
            f"of all processes; use e.g. --batch_size={suggestion}.")
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis_name))
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    ranges = [(idx[0] if idx else slice(None)).indices(global_batch_size)[:2]
              for idx in index_map.values()]
    start, stop = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if stop - start != global_batch_size * len(index_map) // devices:
        raise DistributedConfigError(
            "This process's devices are not one contiguous block of the mesh's batch axis; "
            "build the mesh from jax.devices() in their natural order.")
    return slice(start, stop)
