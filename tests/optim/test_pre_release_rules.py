"""The update rules docs/optim.md calls identical to pre-release Flax, against NumPy.

Each NumPy function below is the pre-release rule written out from the reference (section
3.3 of the original API), independent of optax; five steps on a fixed gradient sequence.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import optim

P0 = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], np.float64)
GRADS = [np.cos(np.arange(6.0).reshape(2, 3) * (k + 1)) for k in range(5)]


def np_momentum(lr, beta, wd, nesterov):
    p, m = P0.copy(), np.zeros_like(P0)
    for g in GRADS:
        g = g + wd * p
        m = beta * m + g
        p = p - lr * ((g + beta * m) if nesterov else m)
    return p


def np_adam(lr, b1, b2, eps, wd):
    p, m, v = P0.copy(), np.zeros_like(P0), np.zeros_like(P0)
    for t, g in enumerate(GRADS, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps) - lr * wd * p
    return p


def np_rmsprop(lr, b2, eps):
    p, v = P0.copy(), np.zeros_like(P0)
    for g in GRADS:
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * g / (np.sqrt(v) + eps)
    return p


def np_lars(lr, beta, tc, eps):  # weight_decay = 0: the documented case of agreement
    p, m = P0.copy(), np.zeros_like(P0)
    for g in GRADS:
        pn, gn = np.linalg.norm(p), np.linalg.norm(g)
        trust = tc * pn / (gn + eps) if pn > 0 and gn > 0 else 1.0
        m = beta * m + lr * trust * g
        p = p - m
    return p


def np_lamb(lr, b1, b2, eps, wd):  # nonzero parameters: the documented case of agreement
    p, m, v = P0.copy(), np.zeros_like(P0), np.zeros_like(P0)
    for t, g in enumerate(GRADS, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * p
        p = p - np.linalg.norm(p) / np.linalg.norm(u) * lr * u
    return p


CASES = [
    ("sgd", optim.GradientDescent(0.1), np_momentum(0.1, 0.0, 0.0, False)),
    ("momentum", optim.Momentum(0.1, beta=0.8), np_momentum(0.1, 0.8, 0.0, False)),
    ("momentum_wd_nesterov", optim.Momentum(0.1, beta=0.9, weight_decay=0.05, nesterov=True),
     np_momentum(0.1, 0.9, 0.05, True)),
    ("adam", optim.Adam(0.05, beta1=0.8, beta2=0.95, eps=1e-3), np_adam(0.05, 0.8, 0.95, 1e-3, 0)),
    ("adam_wd", optim.Adam(0.05, weight_decay=0.1), np_adam(0.05, 0.9, 0.999, 1e-8, 0.1)),
    ("rmsprop", optim.RMSProp(0.02, beta2=0.8, eps=1e-4), np_rmsprop(0.02, 0.8, 1e-4)),
    ("lars", optim.LARS(0.5, beta=0.7, trust_coefficient=0.1, eps=1e-3),
     np_lars(0.5, 0.7, 0.1, 1e-3)),
    ("lamb", optim.LAMB(0.05, weight_decay=0.01), np_lamb(0.05, 0.9, 0.999, 1e-6, 0.01)),
]


@pytest.mark.parametrize("name,opt_def,want", CASES, ids=[c[0] for c in CASES])
def test_matches_pre_release_rule(name, opt_def, want):
    @jax.jit
    def run(opt):
        for g in GRADS:
            opt = opt.apply_gradient({"w": jnp.asarray(g, jnp.float32)})
        return opt

    opt = run(opt_def.create({"w": jnp.asarray(P0, jnp.float32)}))
    np.testing.assert_allclose(np.asarray(opt.target["w"]), want, rtol=2e-5, atol=2e-6)
