"""BatchNorm against the textbook one-pass formula in plain JAX: same values and gradients,
and (pinned so it does not regress) about as few jaxpr equations."""

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from flaxen import nn
from flaxen.errors import ShapeError

MOMENTUM, EPS = 0.9, 1e-5
# What flaxen's BatchNorm may emit beyond the plain formula: the clamp of the variance
# at zero (stop_gradient, max, sub, add), which the plain formula does without.
CLAMP_EQNS = 4


def plain_bn(x, scale, bias, ra_mean, ra_var):
    """One-pass batch norm over all axes but the last, as a plain-JAX user writes it."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x), axis=axes) - jnp.square(mean)
    mul = lax.rsqrt(var + EPS) * scale
    feat = (1,) * (x.ndim - 1) + (-1,)  # explicit broadcasting (the tests raise on implicit)
    y = x * mul.reshape(feat) + (bias - mean * mul).reshape(feat)
    return y, (MOMENTUM * ra_mean + (1 - MOMENTUM) * mean,
               MOMENTUM * ra_var + (1 - MOMENTUM) * var)


def count_eqns(jaxpr) -> int:
    """Equations of ``jaxpr`` and, recursively, of every jaxpr in their parameters."""
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for p in eqn.params.values():
            for sub in p if isinstance(p, list | tuple) else (p,):
                if isinstance(sub, jex.ClosedJaxpr):
                    n += count_eqns(sub.jaxpr)
                elif isinstance(sub, jex.Jaxpr):
                    n += count_eqns(sub)
    return n


def _setup(x):
    model = nn.BatchNorm.partial(momentum=MOMENTUM, epsilon=EPS)
    _, params, state = model.init_with_state(jax.random.PRNGKey(0), x)
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    c = x.shape[-1]
    params = {"scale": jax.random.normal(keys[0], (c,)) + 1,
              "bias": jax.random.normal(keys[1], (c,))}
    state = nn.Collection({"/": {"mean": jax.random.normal(keys[2], (c,)),
                                 "var": jax.random.uniform(keys[3], (c,)) + 0.5}})
    return model, params, state


def _flaxen(model, state):
    def f(params, x):
        y, new = model.call_with_state(params, state, x)
        return y, (new["/"]["mean"], new["/"]["var"])
    return f


def _plain(state):
    def f(params, x):
        return plain_bn(x, params["scale"], params["bias"], state["/"]["mean"],
                        state["/"]["var"])
    return f


X = jax.random.normal(jax.random.PRNGKey(2), (4, 5, 5, 8)) * 3 + 1


def test_values_and_running_stats_match_plain_formula():
    model, params, state = _setup(X)
    y, (mean, var) = jax.jit(_flaxen(model, state))(params, X)
    y_ref, (mean_ref, var_ref) = jax.jit(_plain(state))(params, X)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(mean), np.asarray(mean_ref), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(var), np.asarray(var_ref), rtol=1e-6, atol=1e-6)


def test_gradients_match_plain_formula():
    model, params, state = _setup(X)
    w = jax.random.normal(jax.random.PRNGKey(3), X.shape)  # a loss that weighs every output

    def loss(f):
        return lambda p, x: jnp.sum(f(p, x)[0] * w)

    got = jax.jit(jax.grad(loss(_flaxen(model, state)), argnums=(0, 1)))(params, X)
    ref = jax.jit(jax.grad(loss(_plain(state)), argnums=(0, 1)))(params, X)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
def test_equation_count_pinned_to_plain_formula(backward):
    model, params, state = _setup(X)
    f, f_ref = _flaxen(model, state), _plain(state)
    if backward:
        def with_grad(g):
            def loss(p, x):
                y, stats = g(p, x)
                return jnp.sum(y), stats
            return jax.grad(loss, argnums=(0, 1), has_aux=True)
        f, f_ref = with_grad(f), with_grad(f_ref)
    got = count_eqns(jax.make_jaxpr(f)(params, X).jaxpr)
    ref = count_eqns(jax.make_jaxpr(f_ref)(params, X).jaxpr)
    assert got <= ref + CLAMP_EQNS, (got, ref)


def test_negative_rounded_variance_is_clamped():
    # A constant channel far from zero: E[x^2] - E[x]^2 rounds below zero in float32, and
    # by more than epsilon, so without the clamp rsqrt would give NaN.
    x = jnp.full((64, 2), 3000.1, jnp.float32).at[:, 1].set(jnp.linspace(-1, 1, 64))
    unclamped = jax.jit(lambda x: jnp.mean(x * x, 0) - jnp.mean(x, 0) ** 2)(x)
    assert float(unclamped[0]) < -EPS  # the case this test is about
    model, params, state = _setup(x)
    y, new = jax.jit(lambda p, x: model.call_with_state(p, state, x))(params, x)
    assert np.isfinite(np.asarray(y)).all()
    # The running variance took a batch variance of exactly zero for the constant channel.
    np.testing.assert_allclose(float(new["/"]["var"][0]),
                               MOMENTUM * float(state["/"]["var"][0]), rtol=1e-6)


def test_traced_momentum_and_epsilon_equal_static_ones():
    model, params, state = _setup(X)
    static = jax.jit(lambda p, x: model.call_with_state(p, state, x, momentum=0.8,
                                                        epsilon=1e-3))(params, X)
    traced = jax.jit(lambda p, x, m, e: model.call_with_state(p, state, x, momentum=m,
                                                              epsilon=e))(
        params, X, jnp.float32(0.8), jnp.float32(1e-3))
    for a, b in zip(jax.tree.leaves(static), jax.tree.leaves(traced)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_stored_statistics_of_another_shape_are_refused_in_training():
    model, params, state = _setup(X)
    bad = nn.Collection({"/": {"mean": jnp.zeros((3,)), "var": jnp.ones((3,))}})
    with pytest.raises(ShapeError, match=r"stored BatchNorm statistics.*shape \(8,\)"):
        model.call_with_state(params, bad, X)


def test_list_of_axis_names_equals_full_batch():
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 2, 4, 3)) * 2 + 1
    model, params, state = _setup(x.reshape(16, 3))
    y_full, s_full = model.call_with_state(params, state, x.reshape(16, 3))

    def one(xb):
        return model.call_with_state(params, state, xb, axis_name=["a", "b"])

    y, s = jax.vmap(jax.vmap(one, axis_name="b"), axis_name="a")(x)
    np.testing.assert_allclose(np.asarray(y).reshape(16, 3), np.asarray(y_full), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(s["/"]["var"][1, 0]), np.asarray(s_full["/"]["var"]),
                               rtol=1e-5, atol=1e-6)
