"""What the Module API gives layer authors: ``self.param(..., dtype)``, ``self.label``,
``nn.initializers.call_init`` and the checks in ``nn.utils``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import errors, nn
from flaxen.nn import utils
from flaxen.traverse_util import path_to_str


def _param_module(init, dtype):
    class P(nn.Module):
        def apply(self, x):
            return self.param("w", (2, 3), init, dtype)
    return P


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_param_passes_the_dtype_to_the_initializer(dtype):
    seen = []

    def init(key, shape, dtype):
        seen.append(dtype)
        return jax.random.normal(key, shape, dtype)

    _, params = _param_module(init, dtype).init(jax.random.PRNGKey(0), jnp.ones(1))
    assert seen == [dtype] and params["w"].dtype == dtype
    key = nn.base.fold_in_str(jax.random.PRNGKey(0), "w")  # the key self.param draws with
    np.testing.assert_array_equal(params["w"], jax.random.normal(key, (2, 3), dtype))


def test_two_argument_initializer_still_works_and_is_cast():
    def old_style(key, shape):
        return jnp.full(shape, 1.5, jnp.float32)

    _, params = _param_module(old_style, jnp.bfloat16).init(jax.random.PRNGKey(0), jnp.ones(1))
    assert params["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(params["w"], np.float32), np.full((2, 3), 1.5))
    assert nn.initializers.call_init(old_style, jax.random.PRNGKey(0), (1,)).dtype == jnp.float32


def test_the_dtype_is_only_used_at_init():
    _, params = _param_module(nn.initializers.ones, jnp.bfloat16).init(
        jax.random.PRNGKey(0), jnp.ones(1))
    f32 = {"w": params["w"].astype(jnp.float32)}
    assert _param_module(nn.initializers.ones, jnp.bfloat16).call(f32, jnp.ones(1)).dtype == \
        jnp.float32


def test_label_is_the_path_for_messages():
    labels = {}

    class Inner(nn.Module):
        def apply(self, x):
            labels["inner"] = self.label
            return x

    class Outer(nn.Module):
        def apply(self, x):
            labels["outer"] = self.label
            Inner(x)
            return Inner(x, name="named")

    Outer.init(jax.random.PRNGKey(0), jnp.ones(1))
    # The one path spelling: a module is named by its path below the root (the root, which
    # has no path, by its class).
    assert labels == {"outer": "Outer", "inner": "named"}
    assert labels["inner"] == path_to_str(("named",))


def test_checks_name_the_module_and_the_value():
    with pytest.raises(errors.LayerArgumentError, match=r'"CNN/Dense_0".*features.*got 0'):
        utils.check_features("CNN/Dense_0", "features", 0)
    assert utils.check_features("m", "features", (2, np.int32(3))) == (2, 3)
    with pytest.raises(errors.LayerArgumentError):
        utils.check_features("m", "features", True)
    assert utils.check_positive("m", "strides", 2, 3) == (2, 2, 2)
    assert utils.check_positive("m", "strides", None, 3) is None
    for bad in ((1, 2), (1, 0, 1), 1.5, True):
        with pytest.raises(errors.LayerArgumentError, match="strides"):
            utils.check_positive("m", "strides", bad, 3)
    utils.check_number("m", "epsilon", 1e-5, 0.0, float("inf"), "a number >= 0")
    for bad in (-1.0, "0.1", jnp.ones(2), True):
        with pytest.raises(errors.LayerArgumentError, match="epsilon"):
            utils.check_number("m", "epsilon", bad, 0.0, float("inf"), "a number >= 0")
    with pytest.raises(errors.ShapeError, match=r"rank 2 or 3.*rank 1 \(shape \(4,\)\)"):
        utils.check_rank("m", jnp.ones(4), (2, 3))
    assert utils.as_tuple(3, 2) == (3, 3) and utils.as_tuple([1, 2]) == (1, 2)


def test_a_traced_number_is_not_checked():
    jax.jit(lambda r: utils.check_number("m", "rate", r, 0.0, 1.0, "in [0, 1]"))(2.0)


def test_param_for_input_names_both_shapes():
    class Scale(nn.Module):
        def apply(self, x):
            scale = utils.param_for_input(self, "scale", x.shape[-1:], nn.initializers.ones,
                                          x.shape)
            return x * scale[None]

    _, params = Scale.init(jax.random.PRNGKey(0), jnp.ones((2, 3)))
    with pytest.raises(errors.ShapeError, match=r'"Scale".*stored scale of shape \(3,\).*'
                                                r'input shape \(2, 5\)'):
        Scale.call(params, jnp.ones((2, 5)))
    with pytest.raises(errors.LayerArgumentError, match="not an array|an array"):
        Scale.call({"scale": [1.0, 2.0, 3.0]}, jnp.ones((2, 3)))


def test_current_label_inside_and_outside_modules():
    seen = []

    @nn.module
    def Fn(x):  # noqa: N802 - a Module class made from a function
        seen.append(utils.current_label())
        return x

    Fn.init(jax.random.PRNGKey(0), jnp.ones(1))
    assert seen == ["Fn"] and utils.current_label() == "<top level>"
