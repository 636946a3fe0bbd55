"""Naming, nesting, partial, shared, the @nn.module decorator and module_method."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import errors, nn
from tests.nn.modules_for_tests import MLP, Affine, Scale

X = jnp.ones((2, 3), jnp.float32)


def shapes(params):
    return jax.tree.map(jnp.shape, params)


def test_one_counter_per_parent_shared_by_all_classes(rng):
    class Net(nn.Module):
        def apply(self, x):
            x = Affine(x, 4)
            x = Scale(x)
            x = Affine(x, 2, name="head")  # explicit names do not consume the counter
            return Affine(x, 5)

    _, params = Net.init(rng, X)
    assert set(params) == {"Affine_0", "Scale_1", "head", "Affine_2"}
    assert shapes(params)["Affine_2"] == {"kernel": (2, 5), "bias": (5,)}


def test_nested_params_are_plain_nested_dicts(rng):
    _, params = MLP.init(rng, X)
    assert type(params) is dict and type(params["Affine_0"]) is dict
    assert shapes(params) == {
        "Affine_0": {"kernel": (3, 4), "bias": (4,)},
        "Affine_1": {"kernel": (4, 2), "bias": (2,)},
    }


def test_parameter_keys_depend_on_names_not_order(rng):
    class AB(nn.Module):
        def apply(self, x):
            return Affine(x, 2, name="a") + Affine(x, 2, name="b")

    class BA(nn.Module):
        def apply(self, x):
            return Affine(x, 2, name="b") + Affine(x, 2, name="a")

    _, p1 = AB.init(rng, X)
    _, p2 = BA.init(rng, X)
    np.testing.assert_array_equal(p1["a"]["kernel"], p2["a"]["kernel"])
    assert not np.array_equal(p1["a"]["kernel"], p1["b"]["kernel"])


def test_partial_binds_and_call_time_overrides(rng):
    Wide = Affine.partial(features=7)
    assert Wide.__name__ == "Affine"
    out, params = Wide.init(rng, X)
    assert out.shape == (2, 7)
    out, _ = Wide.init(rng, X, features=5)
    assert out.shape == (2, 5)
    # Same hashable arguments give the same class, so jit does not retrace.
    assert Affine.partial(features=7) is Wide


def test_partial_default_name_is_used_inside_apply(rng):
    class Net(nn.Module):
        def apply(self, x):
            return Affine.partial(features=3, name="proj")(x)

    _, params = Net.init(rng, X)
    assert set(params) == {"proj"}


def test_shared_module_has_one_set_of_params(rng):
    class Twice(nn.Module):
        def apply(self, x):
            layer = Affine.shared(features=3, name="tied")
            return layer(layer(x))

    out, params = Twice.init(rng, X)
    assert set(params) == {"tied"}
    kernel, bias = params["tied"]["kernel"], params["tied"]["bias"]
    expected = (X @ kernel + bias[None]) @ kernel + bias[None]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_allclose(Twice.call(params, X), expected, rtol=1e-6)


def test_shared_module_used_in_another_frame_lives_where_created(rng):
    class UseShared(nn.Module):
        def apply(self, x, layer):
            return layer(x)

    class Outer(nn.Module):
        def apply(self, x):
            layer = Affine.shared(features=3, name="shared")
            return UseShared(x, layer=layer, name="use_shared") + layer(x)

    _, params = Outer.init(rng, X)
    assert set(params) == {"shared", "use_shared"} and params["use_shared"] == {}


def test_shared_errors(rng):
    class OverrideName(nn.Module):
        def apply(self, x):
            return Affine.shared(features=3, name="s")(x, name="other")

    with pytest.raises(errors.SharedModuleError, match="Cannot override the name"):
        OverrideName.init(rng, X)

    class SameName(nn.Module):
        def apply(self, x):
            Affine.shared(features=3, name="s")
            Affine.shared(features=3, name="s")

    with pytest.raises(errors.SharedModuleError, match='"s" already exists'):
        SameName.init(rng, X)

    with pytest.raises(errors.SharedModuleError, match="inside a module's apply"):
        Affine.shared(features=3)


def test_unnamed_shared_modules_get_class_names(rng):
    class Net(nn.Module):
        def apply(self, x):
            layer = Affine.shared(features=3)
            return layer(x) + layer(x)

    _, params = Net.init(rng, X)
    assert set(params) == {"Affine_0"}


def test_module_decorator_runs_the_function(rng):
    @nn.module
    def DenseLayer(x, features):
        x = Affine(x, features)
        return nn.relu(x)

    out, params = DenseLayer.init(rng, X, features=4)
    assert DenseLayer.__name__ == "DenseLayer"
    assert set(params) == {"Affine_0"}
    np.testing.assert_allclose(out, jnp.maximum(X @ params["Affine_0"]["kernel"], 0), rtol=1e-6)


class AutoEncoder(nn.Module):
    def apply(self, x, latent=2):
        z = Affine(x, latent, name="encoder")
        return self.decode(z)

    @nn.module_method
    def decode(self, z, **unused_kwargs):
        return Affine(z, 3, name="decoder")


def test_module_method_runs_on_the_same_params(rng):
    x_hat, params = AutoEncoder.init(rng, X)
    assert set(params) == {"encoder", "decoder"}
    model = nn.Model(AutoEncoder, params)
    z = jnp.ones((2, 2), jnp.float32)
    d = params["decoder"]
    np.testing.assert_allclose(model.decode(z), z @ d["kernel"] + d["bias"][None], rtol=1e-6)
    assert AutoEncoder.decode.__qualname__.endswith("AutoEncoder.decode")


def test_helper_methods_and_temporary_attributes(rng):
    class WithHelper(nn.Module):
        def apply(self, x):
            self.width = 3
            return self._block(x)

        def _block(self, x):
            return Affine(x, self.width)

    out, params = WithHelper.init(rng, X)
    assert out.shape == (2, 3) and set(params) == {"Affine_0"}


def test_init_inside_apply_nests_paths_but_not_params(rng):
    class Wrapper(nn.Module):
        def apply(self, x):
            _, inner = Affine.init(jax.random.PRNGKey(1), x, features=2, name="inner")
            return self.param("scaled", None, lambda key, shape: {"k": inner["kernel"] * 2})

    _, params = Wrapper.init(rng, X)
    assert set(params) == {"scaled"}
    assert params["scaled"]["k"].shape == (3, 2)


def test_signature_docstring_from_apply():
    class Documented(nn.Module):
        def apply(self, x):
            """Doubles x."""
            return 2 * x

    assert Documented.__doc__ == "Doubles x."
