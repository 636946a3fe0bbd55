"""flaxen.distributed in one process: flag checks, launcher detection, rows per process.

Several real processes are exercised by the examples' multiprocess_test.py files.
"""

import jax
import pytest

from flaxen import distributed, parallel
from flaxen.errors import DistributedConfigError

_LAUNCHER_VARS = ("FLAXEN_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID",
                  "SLURM_STEP_NODELIST", "SLURM_NTASKS", "OMPI_MCA_orte_hnp_uri",
                  "OMPI_COMM_WORLD_SIZE")


@pytest.fixture
def no_launcher(monkeypatch):
    for name in _LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)


def test_single_process_without_flags_does_nothing(no_launcher):
    assert distributed.initialize() is False
    assert distributed.cluster_detected() is None


@pytest.mark.parametrize("args, match", [
    (("127.0.0.1:1234", None, None), "--coordinator_address given without --num_processes, "
                                     "--process_id"),
    ((None, 2, None), "--num_processes given without --coordinator_address, --process_id"),
    (("localhost", 2, 0), "expected HOST:PORT"),
    (("localhost:1", 0, 0), "--num_processes=0: expected >= 1"),
    (("localhost:1", 2, 2), "--process_id=2: expected 0..1"),
])
def test_bad_flags_are_clear_errors_before_jax_is_touched(args, match, no_launcher):
    with pytest.raises(DistributedConfigError, match=match):
        distributed.initialize(*args)


def test_bad_timeout_variable(monkeypatch, no_launcher):
    monkeypatch.setenv("FLAXEN_HEARTBEAT_TIMEOUT_S", "soon")
    with pytest.raises(DistributedConfigError, match="FLAXEN_HEARTBEAT_TIMEOUT_S='soon'"):
        distributed.initialize("localhost:1", 2, 0)


def test_launchers_are_detected(monkeypatch, no_launcher):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[1-2]")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.cluster_detected() is None  # one task: a plain single process
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert distributed.cluster_detected() == "SLURM"
    monkeypatch.setenv("FLAXEN_DISTRIBUTED", "1")
    assert distributed.cluster_detected() == "FLAXEN_DISTRIBUTED=1"


def test_one_process_reads_every_row():
    mesh = parallel.default_mesh()
    assert jax.process_count() == 1
    assert distributed.local_rows(16, mesh) == slice(0, 16)
    assert distributed.local_rows(5, None) == slice(0, 5)
    with pytest.raises(DistributedConfigError, match=r"--batch_size=12 must be a multiple of "
                       r"the 8 devices.*--batch_size=8"):
        distributed.local_rows(12, mesh)
