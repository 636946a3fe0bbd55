"""WeightNorm against the pre-release rule written out in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import errors, optim

W0 = np.array([[0.5, -1.0], [2.0, 0.3], [-0.7, 1.1]], np.float64)
B0 = np.array([0.1, -0.2], np.float64)
GRADS = [(np.sin(np.arange(6.0).reshape(3, 2) + k), np.cos(np.arange(2.0) + k))
         for k in range(4)]


def np_weight_norm_momentum(lr, beta, wn_decay, eps=1e-8):
    """Pre-release WeightNorm(Momentum) on one kernel (decomposed) and one bias (not)."""
    norm = lambda x: np.sqrt(np.sum(x * x, axis=0, keepdims=True))
    w, b = W0.copy(), B0.copy()
    mult = norm(w) / (eps + norm(w / norm(w)))
    m_dir, m_scale, m_b = np.zeros_like(w), np.zeros((1, 2)), np.zeros_like(b)
    for gw, gb in GRADS:
        direction, scale = w / mult, norm(w) * np.sign(mult)
        scale_grad = np.sum(gw * direction, axis=0, keepdims=True)
        dir_grad = mult * (gw - scale_grad * direction) + wn_decay * direction
        m_dir = beta * m_dir + dir_grad
        m_scale = beta * m_scale + scale_grad
        m_b = beta * m_b + gb
        direction, scale, b = direction - lr * m_dir, scale - lr * m_scale, b - lr * m_b
        mult = scale / (eps + norm(direction))
        w = direction * mult
    return w, b


@pytest.mark.parametrize("wn_decay", [0.0, 0.1])
def test_weight_norm_matches_pre_release_rule(wn_decay):
    opt = optim.WeightNorm(optim.Momentum(0.1, beta=0.9), wn_decay=wn_decay).create(
        {"kernel": jnp.asarray(W0, jnp.float32), "bias": jnp.asarray(B0, jnp.float32)})

    @jax.jit
    def run(opt):
        for gw, gb in GRADS:
            opt = opt.apply_gradient({"kernel": jnp.asarray(gw, jnp.float32),
                                      "bias": jnp.asarray(gb, jnp.float32)})
        return opt

    opt = run(opt)
    want_w, want_b = np_weight_norm_momentum(0.1, 0.9, wn_decay)
    np.testing.assert_allclose(opt.target["kernel"], want_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opt.target["bias"], want_b, rtol=1e-5, atol=1e-6)
    assert int(opt.state.step) == len(GRADS)


def test_weight_norm_overrides_and_errors():
    opt = optim.WeightNorm(optim.GradientDescent()).create({"w": jnp.ones((2, 2))})
    g = {"w": jnp.ones((2, 2))}
    with pytest.raises(errors.HyperParamError, match="learning_rate"):
        opt.apply_gradient(g)
    moved = opt.apply_gradient(g, learning_rate=0.5, wn_decay=0.0)
    assert not np.allclose(moved.target["w"], 1.0)
    with pytest.raises(errors.HyperParamError, match="OptimizerDef"):
        optim.WeightNorm("adam")
