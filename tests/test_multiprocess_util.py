"""tests/multiprocess_util.py is the one multi-process launcher of the repository."""

from tests import multiprocess_util as mp

# What a hand-written launcher contains: a port picked by hand, or a coordinator address
# spelled out.
LAUNCHER_SIGNS = ("socket.socket(", "--coordinator_address=127", "--coordinator_address=localhost")


def test_no_test_or_example_has_its_own_launcher():
    files = [*mp.REPO.glob("tests/**/*.py"), *mp.REPO.glob("examples/**/*_test.py")]
    own = sorted(str(p.relative_to(mp.REPO)) for p in files
                 if p.name != "multiprocess_util.py" and p.name != "test_multiprocess_util.py"
                 and any(sign in p.read_text() for sign in LAUNCHER_SIGNS))
    assert not own, (f"{own} start several processes by hand; use tests/multiprocess_util.py "
                     "(mp.run / mp.start / mp.run_single).")


def test_process_arguments():
    assert mp.distributed_flags(1, 2, 1234) == [
        "--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=1"]
    assert mp.positional_args(1, 2, 1234) == ["1", "1234"]


def test_environment_of_a_process():
    env = mp.cpu_env(3, EXTRA="1")
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"
    assert env["JAX_PLATFORMS"] == "cpu" and env["EXTRA"] == "1"
    assert str(mp.REPO) in env["PYTHONPATH"].split(":")
    assert 0 < mp.free_port() < 65536
