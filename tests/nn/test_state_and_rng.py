"""State (nn.stateful, init_with_state, call_with_state) and randomness (make_rng, _rng)
under jit, grad, vmap and lax.scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import errors, nn
from tests.nn.modules_for_tests import Affine, Counter, Noisy

X = jnp.ones((2, 3), jnp.float32)


class CountingNet(nn.Module):
    def apply(self, x):
        x = Counter(x)
        return Affine(x, 2)


def count_of(state):
    return int(state["/Counter_0"]["count"])


def test_init_with_state_and_call_with_state(rng):
    _, params, state = CountingNet.init_with_state(rng, X)
    assert count_of(state) == 0 and params["Counter_0"] == {}  # state is not in params
    model = nn.Model(CountingNet, params)
    _, state1 = model.call_with_state(state, X)
    _, state2 = model.call_with_state(state1, X)
    assert (count_of(state), count_of(state1), count_of(state2)) == (0, 1, 2)


def test_old_spelling_stateful_blocks(rng):
    with nn.stateful() as init_state:
        _, params = CountingNet.init(rng, X)
    with nn.stateful(init_state) as new_state:
        CountingNet.call(params, X)
    assert count_of(new_state) == 1 and count_of(init_state) == 0
    with nn.stateful(new_state, mutable=False), pytest.raises(errors.ImmutableStateError):
        CountingNet.call(params, X)


def test_state_under_jit_grad_vmap_scan(rng):
    _, params, state = CountingNet.init_with_state(rng, X)
    model = nn.Model(CountingNet, params)

    step = jax.jit(lambda m, s, x: m.call_with_state(s, x))
    _, s = step(model, state, X)
    _, s = step(model, s, X)
    assert count_of(s) == 2

    def loss(m, s):
        y, new_s = m.call_with_state(s, X)
        return jnp.sum(y), new_s

    grads, s_after = jax.grad(loss, has_aux=True)(model, state)
    assert isinstance(grads, nn.Model) and count_of(s_after) == 1

    ys, s_vmapped = jax.vmap(lambda x: model.call_with_state(state, x[None]))(X)
    assert ys.shape == (2, 1, 2) and s_vmapped["/Counter_0"]["count"].shape == (2,)

    def body(s, x):
        y, s = model.call_with_state(s, x[None])
        return s, y

    s_scanned, _ = jax.lax.scan(body, state, jnp.ones((5, 3)))
    assert count_of(s_scanned) == 5


def test_old_spelling_inside_jit(rng):
    _, params, state = CountingNet.init_with_state(rng, X)

    @jax.jit
    def step(params, state):
        with nn.stateful(state) as new_state:
            CountingNet.call(params, X)
        return new_state

    assert count_of(step(params, state)) == 1


def test_stateful_opened_outside_jit_gives_a_clear_error(rng):
    _, params, state = CountingNet.init_with_state(rng, X)
    with nn.stateful(state), pytest.raises(errors.StateTraceError, match="Counter_0"):
        jax.jit(lambda p: CountingNet.call(p, X))(params)


def test_missing_state_names_the_module_and_the_fix(rng):
    with pytest.raises(errors.MissingStateError, match='"Counter_0".*init_with_state'):
        CountingNet.init(rng, X)


def test_make_rng_keys_are_distinct_and_reproducible(rng):
    class TwoNoisy(nn.Module):
        def apply(self, x):
            return Noisy(x), Noisy(x)

    _, params = TwoNoisy.init(rng, X)
    a1, b1 = TwoNoisy.call(params, X, _rng=jax.random.PRNGKey(1))
    a2, b2 = TwoNoisy.call(params, X, _rng=jax.random.PRNGKey(1))
    a3, _ = TwoNoisy.call(params, X, _rng=jax.random.PRNGKey(2))
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    assert not np.array_equal(a1, b1) and not np.array_equal(a1, a3)
    with nn.stochastic(jax.random.PRNGKey(1)):
        a4, _ = TwoNoisy.call(params, X)
    np.testing.assert_array_equal(a1, a4)


def test_rng_under_jit_vmap_scan(rng):
    _, params = Noisy.init(rng, X)
    model = nn.Model(Noisy, params)
    step = jax.jit(lambda m, k: m(X, _rng=k))
    k1, k2 = jax.random.split(rng)
    assert not np.array_equal(step(model, k1), step(model, k2))
    per_key = jax.vmap(lambda k: model(X, _rng=k))(jax.random.split(rng, 3))
    assert per_key.shape == (3, 2, 3) and not np.array_equal(per_key[0], per_key[1])

    def body(carry, key):
        return carry, model(X, _rng=key)

    _, ys = jax.lax.scan(body, 0, jax.random.split(rng, 4))
    assert not np.array_equal(ys[0], ys[1])


def test_rng_under_grad(rng):
    _, params = Noisy.init(rng, X)
    g = jax.grad(lambda m, k: jnp.sum(m(X, _rng=k)))(nn.Model(Noisy, params), rng)
    assert isinstance(g, nn.Model)


def test_missing_rng_names_the_module_and_the_fix(rng):
    _, params = Noisy.init(rng, X)  # init provides keys by itself
    with pytest.raises(errors.MissingRngError, match=r"Noisy.*_rng=key"):
        Noisy.call(params, X)


def test_stochastic_opened_outside_jit_gives_a_clear_error(rng):
    _, params = Noisy.init(rng, X)
    with nn.stochastic(rng), pytest.raises(errors.StateTraceError, match="random key"):
        jax.jit(lambda p: Noisy.call(p, X))(params)


def test_mutable_collection_refuses_to_be_traced():
    with nn.Collection().mutate() as c, pytest.raises(errors.FlaxenError, match="mutable"):
        jax.tree.leaves(c)


def test_missing_rng_names_the_module_that_asked_not_the_root(rng):
    class Block(nn.Module):
        def apply(self, x):
            return nn.dropout(Affine(x, 3), 0.5)

    class Net(nn.Module):
        def apply(self, x):
            return Block(Affine(x, 3), name="block")

    _, params = Net.init(rng, X)
    with pytest.raises(errors.MissingRngError) as info:
        Net.call(params, X)
    msg = str(info.value)
    assert 'Module "block" (class Block) asked for a random key' in msg
    assert "call_with_state(state, x, _rng=key)" in msg and "model(x, _rng=key)" in msg
    assert "nn.stochastic(key)" in msg and "deterministic=True" in msg
