"""Checkpoints written by Flax, Orbax and safetensors restore in flaxen, and back; the
pre-release restore rules (scalars, optimizer layout) of issue #12 item 4."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import nn, optim, serialization, struct
from flaxen.errors import CheckpointError, CheckpointMismatchError
from flaxen.training import checkpoints

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


class Lin(nn.Module):
    def apply(self, x):
        return nn.Dense(x, features=2)


def _model(seed=0):
    _, params = Lin.init(jax.random.PRNGKey(seed), jnp.ones((1, 3)))
    return nn.Model(Lin, params)


def _grads(model, value):
    return jax.tree.map(lambda p: jnp.full_like(p, value), model)


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.asarray(x).dtype == np.asarray(y).dtype


def test_orbax_directory_written_by_flax_restores(tmp_path):
    from flax.training import checkpoints as flax_ckpt

    opt = optim.Momentum(learning_rate=0.1, beta=0.9).create(_model())
    opt = opt.apply_gradient(_grads(opt.target, 0.5))
    state = serialization.to_state_dict(opt)
    path = flax_ckpt.save_checkpoint(str(tmp_path), state, 1)
    assert checkpoints.latest_checkpoint(tmp_path) == path
    fresh = optim.Momentum(learning_rate=0.1, beta=0.9).create(_model(1))
    back = checkpoints.restore_checkpoint(tmp_path, fresh)
    _assert_same(opt, back)
    assert isinstance(back.target.params["Dense_0"]["kernel"], jax.Array)
    back = checkpoints.restore_checkpoint(path, fresh)  # the directory itself
    _assert_same(opt, back)


def test_orbax_missing_gives_a_clear_error(tmp_path, monkeypatch):
    import builtins

    from flax.training import checkpoints as flax_ckpt

    flax_ckpt.save_checkpoint(str(tmp_path), {"w": np.ones(2)}, 3)
    real_import = builtins.__import__

    def no_orbax(name, *args, **kwargs):
        if name.startswith("orbax"):
            raise ImportError("No module named 'orbax'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_orbax)
    with pytest.raises(CheckpointError, match="Orbax checkpoint directory.*pip install "
                                              "orbax-checkpoint"):
        checkpoints.restore_checkpoint(tmp_path, {"w": np.zeros(2)})


def test_flax_reads_flaxen_checkpoints_in_flax_format(tmp_path):
    from flax.training import checkpoints as flax_ckpt

    opt = optim.Adam(learning_rate=0.1).create(_model())
    opt = opt.apply_gradient(_grads(opt.target, 0.25))
    checkpoints.save_checkpoint(tmp_path, opt, 1, format="flax")
    state = flax_ckpt.restore_checkpoint(str(tmp_path), target=None)
    np.testing.assert_array_equal(state["target"]["params"]["Dense_0"]["kernel"],
                                  opt.target.params["Dense_0"]["kernel"])
    assert int(state["state"]["step"]) == 1
    # And flaxen reads its own flax-format file back (no checksum in that format).
    back = checkpoints.restore_checkpoint(tmp_path, optim.Adam(learning_rate=0.1).create(
        _model(2)))
    _assert_same(opt, back)


def test_flax_msgpack_checkpoint_file_restores(tmp_path):
    from flax import serialization as flax_ser

    model = _model()
    (tmp_path / "checkpoint_4").write_bytes(flax_ser.to_bytes(
        serialization.to_state_dict(model)))
    _assert_same(model, checkpoints.restore_checkpoint(tmp_path, _model(3)))


def test_restore_state_accepts_jax_array_leaves_from_safetensors(tmp_path):
    from safetensors.flax import load_file, save_file

    model = _model()
    flat = {"Dense_0.kernel": model.params["Dense_0"]["kernel"],
            "Dense_0.bias": model.params["Dense_0"]["bias"], "step": jnp.int32(4)}
    save_file(flat, str(tmp_path / "m.safetensors"))
    loaded = load_file(str(tmp_path / "m.safetensors"))
    assert isinstance(loaded["step"], jax.Array)
    state = {"params": {"Dense_0": {"kernel": loaded["Dense_0.kernel"],
                                    "bias": loaded["Dense_0.bias"]}}}
    back, report = checkpoints.restore_state(_model(5), state)
    assert report.ok
    _assert_same(model, back)
    # Was "expected shape () int32, got shape () int32".
    step, report = checkpoints.restore_state({"step": jnp.int32(0)}, {"step": loaded["step"]})
    assert report.ok and int(step["step"]) == 4
    # And flaxen's state dict goes out to safetensors: the same values come back.
    flat_out = {"/".join(k): v for k, v in _flatten(serialization.to_state_dict(model))}
    save_file(flat_out, str(tmp_path / "out.safetensors"))
    again = load_file(str(tmp_path / "out.safetensors"))
    np.testing.assert_array_equal(again["params/Dense_0/kernel"],
                                  model.params["Dense_0"]["kernel"])


def _flatten(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, (*prefix, k))
        else:
            yield (*prefix, k), v


@struct.dataclass
class TrainState:
    step: int
    optimizer: optim.Optimizer


def test_stored_0d_array_restores_into_python_scalar_leaf(tmp_path):
    # Issue #12 item 4: the common restart `restore_checkpoint(dir, TrainState(step=0, ...))`.
    opt = optim.Momentum(learning_rate=0.1).create(_model())
    checkpoints.save_checkpoint(tmp_path, {"step": np.int64(7), "lr": np.float32(0.5),
                                           "opt": opt}, 7)
    back = checkpoints.restore_checkpoint(tmp_path, {"step": 0, "lr": 1.0, "opt": opt})
    assert back["step"] == 7 and type(back["step"]) is int
    assert back["lr"] == 0.5 and type(back["lr"]) is float
    # Shapes and dtypes stay strict: a float into an int, a vector into a scalar.
    with pytest.raises(CheckpointMismatchError, match="lr: expected int, got shape"):
        checkpoints.restore_checkpoint(tmp_path, {"step": 0, "lr": 1, "opt": opt})
    checkpoints.save_checkpoint(tmp_path, {"step": np.arange(2)}, 8)
    with pytest.raises(CheckpointMismatchError, match=r"step: expected int, got shape \(2,\)"):
        checkpoints.restore_checkpoint(tmp_path, {"step": 0})
    # A Python int stored (pre-release step counters) restores into a 0-d int32 array.
    checkpoints.save_checkpoint(tmp_path, {"step": 9}, 9)
    back = checkpoints.restore_checkpoint(tmp_path, {"step": jnp.int32(0)})
    assert back["step"].dtype == jnp.int32 and int(back["step"]) == 9


def test_train_state_dataclass_restores_with_python_step(tmp_path):
    state = TrainState(step=3, optimizer=optim.Adam(learning_rate=0.1).create(_model()))
    checkpoints.save_checkpoint(tmp_path, state.replace(step=jnp.int32(3)), 3)
    back = checkpoints.restore_checkpoint(tmp_path, TrainState(
        step=0, optimizer=optim.Adam(learning_rate=0.1).create(_model(4))))
    assert back.step == 3 and type(back.step) is int
    _assert_same(state.optimizer, back.optimizer)


def _prerelease_momentum_file(path, model, beta, grads):
    """A checkpoint as the pre-release Flax wrote it, computed with NumPy: plain msgpack,
    ext 1 with NumPy type strings, `state/param_states/params/<path>/momentum`, a Python
    int step."""
    import msgpack

    def ext(a):
        a = np.asarray(a)
        return msgpack.ExtType(1, msgpack.packb((a.shape, a.dtype.str, a.tobytes())))

    params = jax.tree.map(np.asarray, model.params)
    momentum = jax.tree.map(np.zeros_like, params)
    for g in grads:  # m <- beta m + g; p <- p - lr m (lr = 0.25)
        momentum = jax.tree.map(lambda m, g=g: (beta * m + g).astype(np.float32), momentum)
        params = jax.tree.map(lambda p, m: (p - np.float32(0.25) * m).astype(np.float32),
                              params, momentum)
    tree = {"target": {"params": jax.tree.map(ext, params)},
            "state": {"step": len(grads), "param_states": {"params": jax.tree.map(
                lambda m: {"momentum": ext(m)}, momentum)}}}
    path.write_bytes(msgpack.packb(tree))


def test_prerelease_optimizer_checkpoint_continues_training_identically(tmp_path):
    opt_def = optim.Momentum(learning_rate=0.25, beta=0.5)
    start = _model()
    uninterrupted = opt_def.create(start)
    for g in (0.5, -1.0, 0.25, 2.0):
        uninterrupted = uninterrupted.apply_gradient(_grads(uninterrupted.target, g))
    _prerelease_momentum_file(tmp_path / "checkpoint_2", start, np.float32(0.5),
                              [np.float32(0.5), np.float32(-1.0)])
    resumed = checkpoints.restore_checkpoint(tmp_path, opt_def.create(_model(9)))
    assert int(resumed.state.step) == 2
    for g in (0.25, 2.0):
        resumed = resumed.apply_gradient(_grads(resumed.target, g))
    _assert_same(uninterrupted, resumed)


@pytest.mark.parametrize("opt_def", [
    optim.GradientDescent(learning_rate=0.1), optim.Momentum(learning_rate=0.1, beta=0.9),
    optim.Adam(learning_rate=0.1), optim.LAMB(learning_rate=0.1),
    optim.Adagrad(learning_rate=0.1), optim.RMSProp(learning_rate=0.1)],
    ids=lambda d: type(d).__name__)
def test_flaxen_writes_the_prerelease_layout_and_reads_it_back(tmp_path, opt_def):
    opt = opt_def.create(_model())
    for g in (0.5, -0.25):
        opt = opt.apply_gradient(_grads(opt.target, g))
    checkpoints.save_checkpoint(tmp_path, {"opt": opt}, 2, layout="prerelease")
    raw = checkpoints.restore_checkpoint(tmp_path, None)["opt"]
    fields = {"GradientDescent": [], "Momentum": ["momentum"],
              "Adam": ["grad_ema", "grad_sq_ema"], "LAMB": ["grad_ema", "grad_sq_ema"],
              "Adagrad": ["G"], "RMSProp": ["v"]}[type(opt_def).__name__]
    assert set(raw["state"]) == {"step", "param_states"}
    leaf_state = raw["state"]["param_states"]["params"]["Dense_0"]["kernel"]
    assert sorted(leaf_state) == sorted(fields)
    resumed = checkpoints.restore_checkpoint(tmp_path, {"opt": opt_def.create(_model(3))})["opt"]
    _assert_same(opt, resumed)
    a = opt.apply_gradient(_grads(opt.target, 1.0))
    b = resumed.apply_gradient(_grads(resumed.target, 1.0))
    _assert_same(a, b)


def test_prerelease_layout_refused_for_optimizers_without_one(tmp_path):
    opt = optim.Adafactor(learning_rate=0.1).create(_model())
    with pytest.raises(CheckpointError, match="not available for Adafactor"):
        checkpoints.save_checkpoint(tmp_path, opt, 1, layout="prerelease")


def test_optimizer_checkpoint_into_bare_model_says_how(tmp_path):
    # Issue #13 item 7: the advice was strict=False, which then restored 0 entries.
    opt = optim.Momentum(learning_rate=0.1).create(_model())
    checkpoints.save_checkpoint(tmp_path, opt, 1)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)under 'target/'.*subtree='target'") \
            as info:
        checkpoints.restore_checkpoint(tmp_path, _model(6))
    assert "strict=False to keep" not in str(info.value)
    with pytest.raises(CheckpointMismatchError, match="(?s)Nothing in the checkpoint fits.*"
                                                      "subtree='target'"):
        checkpoints.restore_checkpoint(tmp_path, _model(6), strict=False)
    model = checkpoints.restore_checkpoint(tmp_path, _model(6), subtree="target")
    _assert_same(opt.target, model)
    with pytest.raises(CheckpointMismatchError, match="no entry 'tagret'"):
        checkpoints.restore_checkpoint(tmp_path, _model(6), subtree="tagret")
