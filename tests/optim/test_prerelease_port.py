"""Optimizer argument errors and the opt-in finite check (issue #14 items 10 and 12)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import errors, optim


def test_hyper_parameter_of_the_wrong_type():
    opt = optim.Momentum(learning_rate=0.1).create({"w": jnp.ones(2)})
    with pytest.raises(errors.HyperParamError, match="`beta` given per step must be a number"):
        opt.apply_gradient({"w": jnp.ones(2)}, beta="x")
    with pytest.raises(errors.HyperParamError, match="must be a number"):
        opt.apply_gradient({"w": jnp.ones(2)}, learning_rate=[0.1])
    with pytest.raises(errors.HyperParamError, match="`beta` must be a number, got the string"):
        optim.Momentum(learning_rate=0.1, beta="x")
    # numbers and numeric arrays stay accepted
    opt.apply_gradient({"w": jnp.ones(2)}, beta=np.float32(0.5), learning_rate=jnp.array(0.1))


@pytest.mark.parametrize("opt_def", [optim.Adam(0.1), optim.Momentum(0.1),
                                     optim.GradientDescent(0.1), optim.LAMB(0.1)])
def test_integer_params_are_refused(opt_def):
    params = {"dense": {"kernel": jnp.ones(2)}, "count": jnp.ones(2, jnp.int32)}
    with pytest.raises(errors.ParamDtypeError, match=r'"count" has dtype int32'):
        opt_def.create(params)


def test_integer_params_left_out_by_focus_are_fine():
    params = {"kernel": jnp.ones(2), "count": jnp.ones(2, jnp.int32)}
    focus = optim.ModelParamTraversal(lambda path, _: "kernel" in path)
    opt = optim.Adam(0.1).create(params, focus=focus)
    new = opt.apply_gradient({"kernel": jnp.ones(2), "count": jnp.zeros(2, jnp.int32)})
    np.testing.assert_array_equal(new.target["count"], [1, 1])
    assert float(new.target["kernel"][0]) < 1.0


def test_check_finite_outside_jit_names_the_first_bad_path():
    grads = {"a": jnp.ones(2), "b": {"kernel": jnp.array([1.0, jnp.nan])},
             "c": jnp.array([jnp.inf])}
    with pytest.raises(errors.NonFiniteError, match=r"""gradient of "b/kernel\""""):
        optim.check_finite(grads)
    with pytest.raises(errors.NonFiniteError, match="the loss is not finite"):
        optim.check_finite({"a": jnp.ones(2)}, loss=jnp.float32(jnp.nan))
    ok = {"a": jnp.ones(2)}
    assert optim.check_finite(ok, loss=jnp.float32(1.0)) is ok


def test_check_finite_under_jit_stops_training():
    opt = optim.SGD(0.1).create({"w": jnp.array([1.0, 0.0])})

    @jax.jit
    def step(opt, x):
        loss, grads = jax.value_and_grad(lambda p: jnp.sum(jnp.sqrt(p["w"] * x)))(opt.target)
        return opt.apply_gradient(optim.check_finite(grads, loss)), loss

    # sqrt(0)' = inf: the step stops (when it runs, or at the latest when its result is
    # read, depending on the backend's dispatch).
    with pytest.raises(jax.errors.JaxRuntimeError,
                       match=r"""gradient of "w" is not finite"""):
        jax.block_until_ready(step(opt, jnp.float32(1.0)))
    good = optim.SGD(0.1).create({"w": jnp.array([1.0, 4.0])})
    new, loss = step(good, jnp.float32(1.0))
    np.testing.assert_allclose(float(loss), 3.0)
