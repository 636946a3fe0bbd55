"""flaxen.training.checkpoints: atomic saves, pruning, checked and partial restores."""

import errno
import os

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flaxen import nn, optim, serialization
from flaxen.errors import (
    CheckpointError,
    CheckpointExistsError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    SerializationError,
)
from flaxen.training import checkpoints


def _tree(v=1.0):
    return {"w": np.full((2, 3), v, np.float32), "b": {"x": np.full((3,), v, np.int32)},
            "count": 7}


def _names(d):
    return sorted(os.listdir(d))


def test_save_restore_latest_and_step_zero(tmp_path):
    for step in [0, 1, 2]:
        checkpoints.save_checkpoint(tmp_path, _tree(step), step, keep=3)
    assert _names(tmp_path) == ["checkpoint_0", "checkpoint_1", "checkpoint_2"]
    assert checkpoints.latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_2")
    assert checkpoints.restore_checkpoint(tmp_path, _tree(9))["w"][0, 0] == 2.0
    restored = checkpoints.restore_checkpoint(tmp_path, _tree(9), step=0)
    np.testing.assert_array_equal(restored["w"], _tree(0)["w"])  # step=0 is a real step


def test_keep_prunes_by_step_number_natural_order(tmp_path):
    for step in [1, 2, 9, 10, 11]:
        checkpoints.save_checkpoint(tmp_path, _tree(step), step, keep=2)
    assert _names(tmp_path) == ["checkpoint_10", "checkpoint_11"]
    assert checkpoints.checkpoint_steps(tmp_path) == [10, 11]


def test_steps_are_non_negative_ints_matched_exactly(tmp_path):
    # Defect #14.7: prefix "model_1" pruned model_10..model_14 of prefix "model_"; "ckpt"
    # read ckpt-5 and ckpt.5 as steps -5 and 0.5.
    for step in range(10, 15):
        checkpoints.save_checkpoint(tmp_path, _tree(), step, prefix="model_", keep=10)
    with pytest.raises(CheckpointError, match="ends in a digit"):
        checkpoints.save_checkpoint(tmp_path, _tree(), 3, prefix="model_1", keep=1)
    assert checkpoints.checkpoint_steps(tmp_path, prefix="model_") == [10, 11, 12, 13, 14]
    for name in ["ckpt-5", "ckpt.5", "ckpt05", "ckpt+7", "ckpt1e3", "ckpt_2"]:
        (tmp_path / name).write_bytes(b"not mine")
    assert checkpoints.checkpoint_steps(tmp_path, prefix="ckpt") == []
    assert checkpoints.latest_checkpoint(tmp_path, prefix="ckpt") is None
    checkpoints.save_checkpoint(tmp_path, _tree(), 3, prefix="ckpt", keep=1)
    checkpoints.save_checkpoint(tmp_path, _tree(), 4, prefix="ckpt", keep=1)
    assert checkpoints.checkpoint_steps(tmp_path, prefix="ckpt") == [4]
    for name in ["ckpt-5", "ckpt.5", "ckpt05", "ckpt+7", "ckpt1e3", "ckpt_2"]:
        assert (tmp_path / name).read_bytes() == b"not mine"  # never pruned
    for bad in [-1, 0.5, 2.0, "3", True]:
        with pytest.raises(CheckpointError, match="non-negative int"):
            checkpoints.save_checkpoint(tmp_path, _tree(), bad, prefix="x_")
    assert checkpoints.natural_sort(["f_10", "f_2", "f_1"]) == ["f_1", "f_2", "f_10"]
    assert checkpoints.natural_sort(["f_2.0", "f_0.1", "f_-0.2"]) == [
        "f_-0.2", "f_0.1", "f_2.0"]


def test_numpy_and_jax_scalar_steps(tmp_path):
    checkpoints.save_checkpoint(tmp_path, _tree(), jnp.int32(4))
    checkpoints.save_checkpoint(tmp_path, _tree(), np.int64(5))
    assert _names(tmp_path) == ["checkpoint_5"]
    with pytest.raises(CheckpointError, match="non-negative int"):
        checkpoints.save_checkpoint(tmp_path, _tree(), float("nan"))


def test_overwrite_rules(tmp_path):
    checkpoints.save_checkpoint(tmp_path, _tree(1), 5, keep=5)
    checkpoints.save_checkpoint(tmp_path, _tree(2), 8, keep=5)
    with pytest.raises(CheckpointExistsError, match="same or a later step"):
        checkpoints.save_checkpoint(tmp_path, _tree(3), 8)
    with pytest.raises(CheckpointExistsError, match="checkpoint_8"):
        checkpoints.save_checkpoint(tmp_path, _tree(3), 6)
    checkpoints.save_checkpoint(tmp_path, _tree(3), 6, keep=5, overwrite=True)
    assert _names(tmp_path) == ["checkpoint_5", "checkpoint_6"]  # the later step 8 is gone
    checkpoints.save_checkpoint(tmp_path, _tree(4), 6, keep=5, overwrite=True)
    assert checkpoints.restore_checkpoint(tmp_path, _tree())["w"][0, 0] == 4.0


def test_missing_directory_and_missing_step(tmp_path):
    target = _tree()
    assert checkpoints.restore_checkpoint(tmp_path / "nope", target) is target
    restored, report = checkpoints.restore_checkpoint(tmp_path / "nope", target, strict=False)
    assert restored is target and report.path is None
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        checkpoints.restore_checkpoint(tmp_path / "nope", target, step=0)
    checkpoints.save_checkpoint(tmp_path, target, 3)
    with pytest.raises(CheckpointNotFoundError, match=r"checkpoint_4.*\[3\]"):
        checkpoints.restore_checkpoint(tmp_path, target, step=4)


def test_restore_from_file_path_and_raw_state_dict(tmp_path):
    path = checkpoints.save_checkpoint(tmp_path, _tree(2), 1)
    assert checkpoints.restore_checkpoint(path, _tree())["w"][1, 1] == 2.0
    raw = checkpoints.restore_checkpoint(tmp_path, None)
    assert set(raw) == {"w", "b", "count"} and raw["b"]["x"].dtype == np.int32


def test_strict_restore_reports_all_mismatches_at_once(tmp_path):
    checkpoints.save_checkpoint(tmp_path, _tree(), 1)
    target = {"w": np.zeros((2, 4), np.float32), "b": {"x": np.zeros(3, np.float32)},
              "new": np.zeros(1)}
    with pytest.raises(CheckpointMismatchError) as info:
        checkpoints.restore_checkpoint(tmp_path, target)
    msg = str(info.value)
    for part in ["w: expected shape (2, 4) float32, got shape (2, 3) float32",
                 "b/x: expected shape (3,) float32, got shape (3,) int32",
                 "missing:    new", "unexpected: count", "strict=False"]:
        assert part in msg
    report = info.value.report
    assert report.missing == ("new",) and report.unexpected == ("count",)
    assert [p for p, _ in report.mismatched] == ["w", "b/x"]


def test_partial_restore_for_fine_tuning(tmp_path, rng):
    class Net(nn.Module):
        def apply(self, x, classes):
            x = nn.Dense(x, features=4, name="body")
            return nn.Dense(x, features=classes, name="head")

    x = jnp.ones((1, 3))
    _, pretrained = Net.init(rng, x, classes=10)
    checkpoints.save_checkpoint(tmp_path, nn.Model(Net, pretrained), 100)
    _, fresh = Net.init(jax.random.PRNGKey(1), x, classes=2)
    model, report = checkpoints.restore_checkpoint(tmp_path, nn.Model(Net, fresh),
                                                   strict=False)
    assert set(report.restored) == {"params/body/kernel", "params/body/bias"}
    assert {p for p, _ in report.mismatched} == {"params/head/kernel", "params/head/bias"}
    assert not report.missing and not report.unexpected and not report.ok
    np.testing.assert_array_equal(model.params["body"]["kernel"],
                                  pretrained["body"]["kernel"])
    np.testing.assert_array_equal(model.params["head"]["kernel"], fresh["head"]["kernel"])
    assert model(x, classes=2).shape == (1, 2)
    assert "2 restored, 0 missing, 0 unexpected, 2 mismatched" in str(report)


def test_optimizer_checkpoint_round_trip(tmp_path, rng):
    class Lin(nn.Module):
        def apply(self, x):
            return nn.Dense(x, features=2)

    _, params = Lin.init(rng, jnp.ones((1, 3)))
    opt = optim.Momentum(learning_rate=0.1, beta=0.9).create(nn.Model(Lin, params))
    opt = opt.apply_gradient(jax.tree.map(jnp.ones_like, opt.target))
    checkpoints.save_checkpoint(tmp_path, opt, int(opt.state.step))
    fresh = optim.Momentum(learning_rate=0.1, beta=0.9).create(nn.Model(Lin, params))
    back = checkpoints.restore_checkpoint(tmp_path, fresh)
    assert int(back.state.step) == 1
    for a, b in zip(jax.tree.leaves(opt), jax.tree.leaves(back)):
        np.testing.assert_array_equal(a, b)
        assert isinstance(b, jax.Array) and a.dtype == b.dtype


def test_restore_onto_sharded_target_keeps_placement(tmp_path):
    devices = np.array(jax.devices())
    if devices.size < 2:
        pytest.skip("needs several devices (the root conftest simulates 8)")
    mesh = Mesh(devices, ("batch",))
    # Saved from one device.
    checkpoints.save_checkpoint(tmp_path, {"p": jnp.arange(8.0), "q": jnp.ones((8, 2))}, 1)
    replicated = NamedSharding(mesh, P())
    split = NamedSharding(mesh, P("batch"))
    target = {"p": jax.device_put(jnp.zeros(8), replicated),
              "q": jax.device_put(jnp.zeros((8, 2)), split)}
    back = checkpoints.restore_checkpoint(tmp_path, target)
    assert back["p"].sharding == replicated and back["q"].sharding == split
    np.testing.assert_array_equal(back["p"], np.arange(8.0))
    # Abstract targets work too: nothing has to be materialised before the restore.
    abstract = {"p": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=replicated),
                "q": jax.ShapeDtypeStruct((8, 2), jnp.float32, sharding=split)}
    back = checkpoints.restore_checkpoint(tmp_path, abstract)
    assert back["q"].sharding == split
    # And a replicated save restores onto a single-device target.
    checkpoints.save_checkpoint(tmp_path, target, 2)
    back = checkpoints.restore_checkpoint(tmp_path, {"p": jnp.zeros(8), "q": jnp.zeros((8, 2))})
    assert len(back["p"].sharding.device_set) == 1


def test_temp_files_never_count_and_stale_ones_are_cleaned(tmp_path):
    checkpoints.save_checkpoint(tmp_path, _tree(1), 1)
    # What a killed saver leaves behind (pid 2**22 + 1 cannot be alive on Linux).
    stale = tmp_path / f".checkpoint_9{checkpoints._TMP_MARK}{checkpoints._HOST}-4194305-ab12"
    stale.write_bytes(b"\x82partial")
    other_host = tmp_path / f".checkpoint_9{checkpoints._TMP_MARK}otherhost-1-ab12"
    other_host.write_bytes(b"\x82partial")
    (tmp_path / "checkpoint_tmp").write_bytes(b"junk")
    (tmp_path / "checkpoint_12.tmp").write_bytes(b"junk")
    assert checkpoints.latest_checkpoint(tmp_path).endswith("checkpoint_1")
    checkpoints.save_checkpoint(tmp_path, _tree(2), 2)
    assert not stale.exists() and other_host.exists()
    assert checkpoints.restore_checkpoint(tmp_path, _tree())["w"][0, 0] == 2.0


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_write_failure_is_clear_and_previous_checkpoint_intact(tmp_path, monkeypatch, err):
    checkpoints.save_checkpoint(tmp_path, _tree(1), 1)
    before = (tmp_path / "checkpoint_1").read_bytes()
    real_write = os.write

    def failing_write(fd, data):
        real_write(fd, bytes(data)[:5])  # a partial write, then the failure
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(checkpoints.os, "write", failing_write)
    with pytest.raises(CheckpointWriteError, match="previous checkpoints are intact") as info:
        checkpoints.save_checkpoint(tmp_path, _tree(2), 2)
    expected = {errno.ENOSPC: "disk is full", errno.EROFS: "read-only",
                errno.EACCES: "permission denied"}[err]
    assert expected in str(info.value)
    monkeypatch.undo()
    assert _names(tmp_path) == ["checkpoint_1"]  # no temp file left, nothing pruned
    assert (tmp_path / "checkpoint_1").read_bytes() == before


def test_replace_failure_keeps_previous(tmp_path, monkeypatch):
    checkpoints.save_checkpoint(tmp_path, _tree(1), 1)

    def failing_replace(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(checkpoints.os, "replace", failing_replace)
    monkeypatch.setattr(checkpoints.os, "link", failing_replace)
    with pytest.raises(CheckpointWriteError, match="read-only"):
        checkpoints.save_checkpoint(tmp_path, _tree(2), 2)
    with pytest.raises(CheckpointWriteError, match="read-only"):
        checkpoints.save_checkpoint(tmp_path, _tree(2), 2, overwrite=True)
    monkeypatch.undo()
    assert _names(tmp_path) == ["checkpoint_1"]


def test_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    checkpoints.save_checkpoint(ro, _tree(1), 1)
    os.chmod(ro, 0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: chmod does not block writes (covered by the "
                        "monkeypatched EROFS/EACCES test)")
        with pytest.raises(CheckpointWriteError, match="permission denied"):
            checkpoints.save_checkpoint(ro, _tree(2), 2)
        assert _names(ro) == ["checkpoint_1"]
    finally:
        os.chmod(ro, 0o755)


def test_damaged_checkpoint_file_names_the_file(tmp_path):
    path = checkpoints.save_checkpoint(tmp_path, _tree(), 1)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(SerializationError, match="checkpoint_1.*truncated"):
        checkpoints.restore_checkpoint(tmp_path, _tree())


def test_bad_arguments(tmp_path):
    with pytest.raises(CheckpointError, match="keep"):
        checkpoints.save_checkpoint(tmp_path, _tree(), 1, keep=0)
    with pytest.raises(CheckpointError, match="path separator"):
        checkpoints.save_checkpoint(tmp_path, _tree(), 1, prefix="a/b")
    with pytest.raises(SerializationError):
        checkpoints.save_checkpoint(tmp_path, {"x": object()}, 1)
    assert not os.listdir(tmp_path)  # nothing written before the target was serializable


def test_restore_state_directly():
    state = serialization.to_state_dict(_tree(3))
    restored, report = checkpoints.restore_state(_tree(), state)
    assert report.ok and restored["count"] == 7 and restored["w"][0, 0] == 3.0


def test_typed_key_leaves_are_checked_against_their_key_data(tmp_path):
    checkpoints.save_checkpoint(tmp_path, {"rng": jax.random.split(jax.random.key(1), 4)}, 1)
    with pytest.raises(CheckpointMismatchError, match=r"rng: expected shape \(3, 2\) uint32, "
                                                      r"got shape \(4, 2\) uint32"):
        checkpoints.restore_checkpoint(tmp_path, {"rng": jax.random.split(jax.random.key(0), 3)})
    back = checkpoints.restore_checkpoint(tmp_path,
                                          {"rng": jax.random.split(jax.random.key(0), 4)})
    np.testing.assert_array_equal(jax.random.key_data(back["rng"]),
                                  jax.random.key_data(jax.random.split(jax.random.key(1), 4)))


def test_restore_only_the_weights_of_an_optimizer_checkpoint(tmp_path, rng):
    class Lin(nn.Module):
        def apply(self, x):
            return nn.Dense(x, features=2)

    _, params = Lin.init(rng, jnp.ones((1, 3)))
    opt = optim.Momentum(learning_rate=0.1, beta=0.9).create(nn.Model(Lin, params))
    checkpoints.save_checkpoint(tmp_path, opt, 0)
    _, other = Lin.init(jax.random.PRNGKey(5), jnp.ones((1, 3)))
    part, report = checkpoints.restore_checkpoint(
        tmp_path, {"target": nn.Model(Lin, other)}, strict=False)
    assert report.unexpected and all(p.startswith("state/") for p in report.unexpected)
    assert not report.missing and not report.mismatched
    np.testing.assert_array_equal(part["target"].params["Dense_0"]["kernel"],
                                  params["Dense_0"]["kernel"])


def test_multi_optimizer_nested_states_round_trip(tmp_path, rng):
    class Lin(nn.Module):
        def apply(self, x):
            return nn.Dense(x, features=2)

    kernels = optim.ModelParamTraversal(lambda path, _: "kernel" in path)
    biases = optim.ModelParamTraversal(lambda path, _: "bias" in path)
    opt_def = optim.MultiOptimizer((kernels, optim.Momentum(learning_rate=0.1, beta=0.9)),
                                   (biases, optim.GradientDescent(learning_rate=0.1)))

    def make(params):
        return opt_def.create(nn.Model(Lin, params))

    _, params = Lin.init(rng, jnp.ones((1, 3)))
    opt = make(params)
    opt = jax.tree.map(lambda x: x + jnp.asarray(3, x.dtype), opt)  # distinct values
    checkpoints.save_checkpoint(tmp_path, opt, 3)
    back = checkpoints.restore_checkpoint(tmp_path, make(params))
    assert jax.tree.structure(back) == jax.tree.structure(opt)
    for a, b in zip(jax.tree.leaves(opt), jax.tree.leaves(back)):
        np.testing.assert_array_equal(a, b)


_leaf = st.one_of(st.integers(-5, 5), st.floats(allow_nan=False), st.none(), st.text(max_size=3),
                  st.sampled_from([np.zeros((2, 3), np.float32), np.zeros(3, np.int32),
                                   np.zeros((2, 3), np.int32), np.float32(1)]))
_state = st.recursive(_leaf, lambda c: st.one_of(
    st.lists(c, max_size=3), st.dictionaries(st.sampled_from(["w", "b", "x", "count", "0"]),
                                             c, max_size=4)), max_leaves=12)


@hypothesis.settings(max_examples=200, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(_state)
def test_fuzz_wrong_structures_give_reports_never_crashes(state):
    target = _tree()
    try:
        restored, report = checkpoints.restore_state(target, state, strict=True)
        assert report.ok
    except (CheckpointMismatchError, SerializationError):
        pass
    try:
        restored, report = checkpoints.restore_state(target, state, strict=False)
    except CheckpointMismatchError as e:  # nothing fits: an error, never the bare target
        assert "Nothing in the checkpoint fits" in str(e) and not e.report.restored
        return
    assert report.restored
    assert jax.tree.structure(restored) == jax.tree.structure(target)
    for t, r in zip(jax.tree.leaves(target), jax.tree.leaves(restored)):
        assert np.shape(t) == np.shape(r) and np.asarray(t).dtype == np.asarray(r).dtype


def test_async_checkpointer_writes_in_background_and_reraises(tmp_path, monkeypatch):
    target = {"w": jnp.arange(4.0)}
    with checkpoints.AsyncCheckpointer() as ckpt:
        path = ckpt.save(tmp_path, target, 1)
        target = {"w": target["w"] + 1}  # the caller may move on at once
        ckpt.save(tmp_path, target, 2, keep=2)  # waits for the first write
    assert path == str(tmp_path / "checkpoint_1")
    assert _names(tmp_path) == ["checkpoint_1", "checkpoint_2"]
    np.testing.assert_array_equal(
        checkpoints.restore_checkpoint(tmp_path, {"w": jnp.zeros(4)}, step=1)["w"],
        np.arange(4.0))

    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    ckpt = checkpoints.AsyncCheckpointer()
    monkeypatch.setattr(checkpoints.os, "write", disk_full)
    ckpt.save(tmp_path, target, 3, keep=2)  # returns; the failure comes with wait()
    with pytest.raises(CheckpointWriteError, match="disk is full"):
        ckpt.wait()
    ckpt.wait()  # the error is raised once
    monkeypatch.undo()
    assert _names(tmp_path) == ["checkpoint_1", "checkpoint_2"]
    with pytest.raises(CheckpointExistsError):  # overwrite rules apply in the thread too
        ckpt.save(tmp_path, target, 2)
        ckpt.wait()


def test_reader_following_a_saver_never_sees_a_partial_or_vanished_file(tmp_path):
    import threading
    import time

    def tree(step):
        return {"w": np.full((20000 + step * 37,), step, np.float32), "step": step}

    done = threading.Event()
    errors = []

    def saver():
        try:
            step = 0
            while not done.is_set():
                checkpoints.save_checkpoint(tmp_path, tree(step), step, keep=1)
                step += 1
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    thread = threading.Thread(target=saver)
    thread.start()
    reads, start = 0, time.monotonic()
    try:  # read for 2 s, longer (up to 30 s) until a first checkpoint was read
        while time.monotonic() < start + 2.0 or (reads == 0 and time.monotonic() < start + 30):
            raw = checkpoints.restore_checkpoint(tmp_path, None)
            if raw is None:
                continue
            step = raw["step"]
            assert raw["w"].shape == (20000 + step * 37,) and np.all(raw["w"] == step)
            reads += 1
    finally:
        done.set()
        thread.join()
    assert not errors and reads > 0


def test_latest_pruned_between_listing_and_opening_is_retried(tmp_path, monkeypatch):
    checkpoints.save_checkpoint(tmp_path, _tree(1), 1)
    real_resolve = checkpoints._resolve
    calls = []

    def stale_first(ckpt_dir, step, prefix):
        calls.append(step)
        if len(calls) == 1:  # what a reader listed just before a save pruned it
            return os.path.join(ckpt_dir, prefix + "0")
        return real_resolve(ckpt_dir, step, prefix)

    monkeypatch.setattr(checkpoints, "_resolve", stale_first)
    assert checkpoints.restore_checkpoint(tmp_path, _tree())["w"][0, 0] == 1.0
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(CheckpointNotFoundError, match="checkpoint_0"):
        checkpoints.restore_checkpoint(tmp_path, _tree(), step=1)  # an explicit step: no retry


def test_relative_paths_in_messages_are_shown_resolved(tmp_path, monkeypatch):
    # A message read later in a log must name the file whatever the working directory was.
    monkeypatch.chdir(tmp_path)
    checkpoints.save_checkpoint("run/ckpt", _tree(), 3)
    resolved = str(tmp_path / "run" / "ckpt")
    messages = []
    for fn, error in [
            (lambda: checkpoints.restore_checkpoint("run/ckpt", _tree(), step=4),
             CheckpointNotFoundError),
            (lambda: checkpoints.restore_checkpoint("run/missing", _tree(), step=1),
             CheckpointNotFoundError),
            (lambda: checkpoints.save_checkpoint("run/ckpt", _tree(), 3), CheckpointExistsError),
            (lambda: checkpoints.restore_checkpoint("run/ckpt", {"w": _tree()["w"]}),
             CheckpointMismatchError),
            (lambda: checkpoints.restore_checkpoint("run/ckpt", _tree(), subtree="nope"),
             CheckpointMismatchError)]:
        with pytest.raises(error) as info:
            fn()
        messages.append(str(info.value))
    (tmp_path / "run" / "ckpt" / "checkpoint_3").write_bytes(b"not a checkpoint")
    with pytest.raises(SerializationError) as info:
        checkpoints.restore_checkpoint("run/ckpt", _tree())
    messages.append(str(info.value))
    for message in messages:
        # What the user passed, and where that is.
        assert "'run/" in message and f"(resolved: {tmp_path}{os.sep}run{os.sep}" in message, (
            message)
    assert f"(resolved: {resolved}{os.sep}checkpoint_3)" in messages[-1]
    # An absolute path is shown as given, once.
    with pytest.raises(CheckpointNotFoundError) as info:
        checkpoints.restore_checkpoint(resolved, _tree(), step=9)
    assert f"'{resolved}{os.sep}checkpoint_9'" in str(info.value)
    assert "resolved:" not in str(info.value)
