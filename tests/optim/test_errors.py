"""Bad input gives a clear flaxen error naming the path, the name or the sizes."""

import jax
import jax.numpy as jnp
import optax
import pytest

from flaxen import errors, nn, optim


def _opt(opt_def=None):
    target = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros((3,))}}
    return (opt_def or optim.Momentum(0.1)).create(target)


def test_gradient_structure_mismatch_names_path():
    opt = _opt()
    with pytest.raises(errors.GradientStructureError, match=r"dense/bias"):
        opt.apply_gradient({"dense": {"kernel": jnp.ones((2, 3))}})
    with pytest.raises(errors.GradientStructureError, match=r"extra.*not in the target"):
        opt.apply_gradient({"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)},
                            "extra": jnp.ones(1)})
    with pytest.raises(errors.GradientStructureError, match=r"kernel.*\(2, 3\).*\(3, 2\)"):
        opt.apply_gradient({"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(3)}})


def test_gradient_structure_error_for_model_target(rng):
    _, model = nn.Dense.create(rng, jnp.ones((1, 2)), features=3)
    opt = optim.SGD(0.1).create(model)
    with pytest.raises(errors.GradientStructureError, match="bias"):
        opt.apply_gradient({"kernel": jnp.ones((2, 3))})


def test_negative_learning_rate():
    with pytest.raises(errors.HyperParamError, match=r"learning_rate.*>= 0.*-0.1"):
        optim.Adam(learning_rate=-0.1)
    with pytest.raises(errors.HyperParamError, match=r"learning_rate.*>= 0"):
        _opt().apply_gradient(jax.tree.map(jnp.ones_like, _opt().target), learning_rate=-1.0)
    with pytest.raises(errors.HyperParamError, match=r"learning_rate.*>= 0"):
        _opt(optim.Optax(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1))
             ).apply_gradient(jax.tree.map(jnp.ones_like, _opt().target), learning_rate=-1.0)
    with pytest.raises(errors.HyperParamError, match=r"beta.*>= 0"):
        optim.Momentum(0.1, beta=-0.5)


def test_missing_unknown_and_fixed_hyper_params():
    g = jax.tree.map(jnp.ones_like, _opt().target)
    with pytest.raises(errors.HyperParamError, match="learning_rate` was not provided"):
        _opt(optim.Adam()).apply_gradient(g)
    _opt(optim.Adam()).apply_gradient(g, learning_rate=0.1)  # given per step: fine
    with pytest.raises(errors.HyperParamError, match="`betaa` does not exist.*beta"):
        _opt().apply_gradient(g, betaa=0.5)
    with pytest.raises(errors.HyperParamError, match="nesterov.*fixed at construction"):
        _opt().apply_gradient(g, nesterov=True)
    with pytest.raises(errors.HyperParamError, match="weight_decay.*created as 0"):
        _opt().apply_gradient(g, weight_decay=1e-4)
    _opt(optim.Momentum(0.1, weight_decay=1e-4)).apply_gradient(g, weight_decay=1e-3)
    with pytest.raises(errors.HyperParamError, match="no injected hyper-parameters"):
        _opt(optim.Optax(optax.sgd(0.1))).apply_gradient(g, learning_rate=0.1)
    with pytest.raises(errors.HyperParamError, match="GradientTransformation"):
        optim.Optax("adam")


def test_traced_constructor_value_and_non_scalar_loss():
    with pytest.raises(errors.HyperParamError, match="traced value"):
        jax.jit(lambda lr: optim.SGD(lr).create({"w": jnp.ones(2)}).state.step)(0.1)
    with pytest.raises(errors.FlaxenError, match=r"scalar loss.*\(2,\)"):
        optim.SGD(0.1).create({"w": jnp.ones(2)}).optimize(lambda p: p["w"] * 2)


def test_schedule_argument_errors():
    with pytest.raises(errors.HyperParamError, match="warmup_steps"):
        optim.schedules.linear_warmup(0.1, warmup_steps=-1)
    with pytest.raises(errors.HyperParamError, match="one value per boundary"):
        optim.schedules.step_decay(0.1, [10, 20], factor=[0.1])
