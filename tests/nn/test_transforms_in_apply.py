"""JAX transformations started inside ``apply``: lax.scan, fori_loop, vmap, checkpoint,
cond, and ``jax_utils.scan_in_dim``.

Each parameter created inside one must be created once, concrete (never a leaked
tracer), and be the one used at call time (a call with other params gives their result,
not the init-time output), or the init raises ``TransformInitError`` naming the path.
References: the same submodules run outside any transformation, and plain loops.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from flaxen import errors, jax_utils, nn
from tests.nn.modules_for_tests import Affine, Scale

X = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), jnp.float32)
TOL = {"rtol": 1e-6, "atol": 1e-6}


def _concrete(params):
    leaves = jax.tree.leaves(params)
    return bool(leaves) and all(isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
                                for x in leaves)


def _perturbed(params):
    return jax.tree.map(lambda p: p * 0.5 + 0.25, params)


class ScanNet(nn.Module):
    def apply(self, xs):
        step = Affine.partial(features=3, name="step")
        return lax.scan(lambda h, x: (jnp.tanh(step(h) + x), h), jnp.zeros((3,)), xs)[0]


class FoRiNet(nn.Module):
    def apply(self, x):
        scale = Scale.partial(name="scale")
        return lax.fori_loop(0, 3, lambda i, h: jnp.tanh(scale(h)), x)


class VmapNet(nn.Module):
    def apply(self, x):
        return jax.vmap(lambda row: Affine(row, 2, name="per_row"))(x)


class RematNet(nn.Module):
    def apply(self, x):
        return jax.checkpoint(lambda h: Affine(nn.relu(Affine(h, 5)), 2))(x)


class CondNet(nn.Module):
    def apply(self, x, flag):
        return lax.cond(flag, lambda h: Affine(h, 2, name="yes"),
                        lambda h: Affine(h, 2, name="no") * 2.0, x)


def ref_scan(params, xs):
    h = jnp.zeros((3,))
    for x in xs:
        h = jnp.tanh(Affine.call(params["step"], h, features=3) + x)
    return h


def ref_fori(params, x):
    for _ in range(3):
        x = jnp.tanh(Scale.call(params["scale"], x))
    return x


def ref_vmap(params, x):
    return Affine.call(params["per_row"], x, 2)


def ref_remat(params, x):
    return Affine.call(params["Affine_1"], nn.relu(Affine.call(params["Affine_0"], x, 5)), 2)


CASES = [
    (ScanNet, (X,), {}, ref_scan),
    (FoRiNet, (X,), {}, ref_fori),
    (VmapNet, (X,), {}, ref_vmap),
    (RematNet, (X,), {}, ref_remat),
]


@pytest.mark.parametrize("net,args,kw,ref", CASES, ids=[c[0].__name__ for c in CASES])
def test_params_made_inside_a_transformation_are_concrete_and_used(rng, net, args, kw, ref):
    out, params = net.init(rng, *args, **kw)
    assert _concrete(params)
    np.testing.assert_allclose(out, ref(params, *args), **TOL)
    other = _perturbed(params)
    np.testing.assert_allclose(net.call(other, *args, **kw), ref(other, *args), **TOL)
    jitted = jax.jit(lambda p, a: net.call(p, a, **kw))
    np.testing.assert_allclose(jitted(other, *args), ref(other, *args), **TOL)
    zeros = jax.tree.map(jnp.zeros_like, params)
    np.testing.assert_allclose(net.call(zeros, *args, **kw), ref(zeros, *args), **TOL)
    # Created once: a second init gives the same values.
    _, again = net.init(rng, *args, **kw)
    jax.tree.map(np.testing.assert_array_equal, params, again)


@pytest.mark.parametrize("net,args,kw,ref", CASES, ids=[c[0].__name__ for c in CASES])
def test_traced_init_key_gives_a_clear_error(rng, net, args, kw, ref):
    del ref
    with pytest.raises(errors.TransformInitError) as info:
        jax.jit(lambda k: net.init(k, *args, **kw)[1])(rng)
    msg = str(info.value)
    assert 'Parameter "params/' in msg and "scan_in_dim" in msg and ".shared(" in msg


def test_cond_creates_both_branches_once(rng):
    out, params = CondNet.init(rng, X, True)
    assert sorted(params) == ["no", "yes"] and _concrete(params)
    np.testing.assert_allclose(out, Affine.call(params["yes"], X, 2), **TOL)
    other = _perturbed(params)
    np.testing.assert_allclose(CondNet.call(other, X, False),
                               Affine.call(other["no"], X, 2) * 2.0, **TOL)


def test_initializer_reading_loop_values_is_an_error(rng):
    class DataInit(nn.Module):
        def apply(self, xs):
            def body(c, x):
                w = self.param("w", None, lambda key, shape: x.mean())
                return c + w, x
            return lax.scan(body, 0.0, xs)[0]

    with pytest.raises(errors.TransformInitError, match='"params/w"'):
        DataInit.init(rng, X)


# -- scan_in_dim -------------------------------------------------------------------------


class Encoder(nn.Module):
    def apply(self, xs, hidden=4):
        carry = nn.LSTMCell.initialize_carry(jax.random.PRNGKey(0), xs.shape[:1], hidden)
        return jax_utils.scan_in_dim(nn.LSTMCell.partial(name="lstm_cell"), carry, xs, axis=1)


XS = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 3)), jnp.float32)


def ref_encoder(params, xs, hidden=4):
    carry = nn.LSTMCell.initialize_carry(jax.random.PRNGKey(0), xs.shape[:1], hidden)
    ys = []
    for t in range(xs.shape[1]):
        carry, y = nn.LSTMCell.call(params["lstm_cell"], carry, xs[:, t])
        ys.append(y)
    return carry, jnp.stack(ys, 1)


def _check_encoder(params, out):
    assert _concrete(params) and sorted(params) == ["lstm_cell"]
    (c, h), ys = out
    (rc, rh), rys = ref_encoder(params, XS)
    np.testing.assert_allclose(ys, rys, **TOL)
    np.testing.assert_allclose(h, rh, **TOL)
    assert ys.shape == (2, 5, 4)


def test_scan_in_dim_with_a_module_body_under_every_entry_point(rng):
    out, params = Encoder.init(rng, XS)
    _check_encoder(params, out)
    shapes, by_shape = Encoder.init_by_shape(rng, [XS.shape])
    assert shapes[1].shape == (2, 5, 4)
    jax.tree.map(np.testing.assert_array_equal, params, by_shape)
    _, model = Encoder.create_by_shape(rng, [XS.shape])
    jax.tree.map(np.testing.assert_array_equal, params, model.params)
    with nn.stochastic(jax.random.PRNGKey(7)):
        out2, params2 = Encoder.init(rng, XS)
    _check_encoder(params2, out2)
    out3, params3 = jax.jit(lambda k, x: Encoder.init(k, x))(rng, XS)
    _check_encoder(params3, out3)
    other = _perturbed(params)
    _check_encoder(other, jax.jit(lambda p, x: Encoder.call(p, x))(other, XS))
    _check_encoder(other, Encoder.call(other, XS))


def test_scan_in_dim_matches_lax_scan_over_several_axes():
    xs = {"a": jnp.arange(24.0).reshape(2, 3, 4), "b": jnp.arange(6.0).reshape(2, 3)}

    def body(c, x):
        return c + x["a"].sum() + x["b"].sum(), x["a"] * 2.0

    c, ys = jax_utils.scan_in_dim(body, 0.0, xs, axis=1)
    rc, rys = lax.scan(body, 0.0, {"a": jnp.moveaxis(xs["a"], 1, 0), "b": xs["b"].T})
    np.testing.assert_allclose(c, rc)
    np.testing.assert_allclose(ys, jnp.moveaxis(rys, 0, 1))
    # Two axes: nested loops, the first listed outermost; outputs back at those axes.
    c2, ys2 = jax_utils.scan_in_dim(lambda c, x: (c * 10.0 + x, x + c), 0.0,
                                    jnp.arange(6.0).reshape(2, 3), axis=(1, 0))
    expect_c = 0.0
    expect_ys = np.zeros((2, 3))
    for j in range(3):
        for i in range(2):
            expect_ys[i, j] = float(i * 3 + j) + expect_c
            expect_c = expect_c * 10.0 + float(i * 3 + j)
    np.testing.assert_allclose(c2, expect_c, rtol=1e-6)
    np.testing.assert_allclose(ys2, expect_ys, rtol=1e-6)
    # keepdims: slices keep size-1 scanned axes; outputs too.
    seen = []

    def keep_body(c, x):
        seen.append(x.shape)
        return c, x[:, :, 0] * 3.0

    _, ys3 = jax_utils.scan_in_dim(keep_body, 0.0, jnp.ones((2, 3, 4)), axis=1, keepdims=True)
    assert seen == [(2, 1, 4)] and ys3.shape == (2, 3)


def test_scan_in_dim_gives_each_step_its_own_key():
    class NoisyStep(nn.Module):
        def apply(self, c, x):
            return c, x + jax.random.uniform(nn.make_rng(), x.shape)

    class Net(nn.Module):
        def apply(self, xs):
            return jax_utils.scan_in_dim(NoisyStep.partial(name="noisy"), 0.0, xs, axis=0)[1]

    _, params = Net.init(jax.random.PRNGKey(0), jnp.zeros((4, 3)))
    ys = Net.call(params, jnp.zeros((4, 3)), _rng=jax.random.PRNGKey(1))
    assert len({tuple(np.asarray(y).round(6)) for y in ys}) == 4


def test_scan_in_dim_bad_axis_names_the_module():
    class Bad(nn.Module):
        def apply(self, xs):
            return jax_utils.scan_in_dim(lambda c, x: (c, x), 0.0, xs, axis=3)

    with pytest.raises(errors.ScanAxisError) as info:
        Bad.init(jax.random.PRNGKey(0), XS)
    msg = str(info.value)
    assert '"Bad"' in msg and "rank 3" in msg and "axis=3" in msg and "axis=1" in msg
    with pytest.raises(errors.ScanAxisError, match="sizes"):
        jax_utils.scan_in_dim(lambda c, x: (c, x), 0.0, (jnp.ones((2, 3)), jnp.ones((4, 3))))
    with pytest.raises(errors.ScanAxisError, match="distinct"):
        jax_utils.scan_in_dim(lambda c, x: (c, x), 0.0, jnp.ones((2, 3)), axis=(0, -2))


def test_raw_lax_scan_lstm_uses_the_params_passed_in(rng):
    """The reported defect: params made in the scan leaked as tracers at init, and a call
    with all-zero weights returned the init-time output."""

    class RawLSTM(nn.Module):
        def apply(self, xs):
            cell = nn.LSTMCell.partial(name="lstm_cell")
            carry = nn.LSTMCell.initialize_carry(jax.random.PRNGKey(0), xs.shape[:1], 4)
            carry, ys = lax.scan(lambda c, x: cell(c, x), carry, jnp.swapaxes(xs, 0, 1))
            return carry, jnp.swapaxes(ys, 0, 1)

    out, params = RawLSTM.init(rng, XS)
    _check_encoder(params, out)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for run in (RawLSTM.call, jax.jit(RawLSTM.call)):
        (_, h), ys = run(zeros, XS)
        np.testing.assert_allclose(ys, ref_encoder(zeros, XS)[1], **TOL)
        assert not np.allclose(ys, out[1])
