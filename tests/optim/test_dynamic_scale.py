"""DynamicScale: scaled gradients equal plain ones, the scale backs off and grows."""

import jax
import jax.numpy as jnp
import numpy as np

from flaxen import optim


def test_float16_gradients_survive_with_scaling():
    p = jnp.ones((3,), jnp.float16)
    # float16 activations, float32 loss (the usual setup): dL/dp = 1e-8 < float16's range.
    loss = lambda p: jnp.sum((p * jnp.float16(1e-4)).astype(jnp.float32)) * 1e-4
    assert float(jnp.abs(jax.grad(loss)(p)).max()) == 0.0  # underflows in float16
    ds, finite, value, grad = optim.DynamicScale().value_and_grad(loss)(p)
    assert bool(finite) and grad.dtype == jnp.float32
    np.testing.assert_allclose(grad, np.full(3, 1e-8), rtol=2e-3)
    np.testing.assert_allclose(float(value), 3e-8, rtol=2e-3)
    assert int(ds.fin_steps) == 1 and float(ds.scale) == 65536.0


def test_backoff_on_overflow_and_growth_after_interval():
    ds = optim.DynamicScale(growth_interval=2)
    ok = lambda p: (jnp.sum(p**2), {"n": 1})
    bad = lambda p: (jnp.sum(p * 1e35), {"n": 2})  # scaled gradient overflows float32

    @jax.jit
    def step(ds, which):
        return jax.lax.cond(which, ds.value_and_grad(bad, has_aux=True),
                            ds.value_and_grad(ok, has_aux=True), jnp.ones(2))

    ds, finite, (loss, aux), grad = step(ds, False)
    assert bool(finite) and float(loss) == 2.0 and int(aux["n"]) == 1
    np.testing.assert_allclose(grad, [2.0, 2.0])
    ds, finite, _, _ = step(ds, True)
    assert not bool(finite)
    assert float(ds.scale) == 32768.0 and int(ds.fin_steps) == 0
    for expected_steps in (1, 2):
        ds, finite, _, _ = step(ds, False)
        assert int(ds.fin_steps) == expected_steps and float(ds.scale) == 32768.0
    ds, finite, _, _ = step(ds, False)  # fin_steps == growth_interval: grow
    assert float(ds.scale) == 65536.0 and int(ds.fin_steps) == 0
