"""Every Module-system error: its class, and a message naming path, expected, got, fix."""

import jax.numpy as jnp
import pytest

from flaxen import errors, nn
from tests.nn.modules_for_tests import MLP, Affine

X = jnp.ones((2, 3), jnp.float32)


def test_all_errors_are_value_errors_for_old_code():
    assert issubclass(errors.FlaxenError, ValueError)


def test_param_shape_mismatch_names_path_and_both_shapes(rng):
    _, params = MLP.init(rng, X)
    with pytest.raises(errors.ParamShapeError) as info:
        MLP.call(params, jnp.ones((2, 5)))
    msg = str(info.value)
    assert "params/Affine_0/kernel" in msg and "(3, 4)" in msg and "(5, 4)" in msg
    assert "input" in msg  # the likely fix


def test_missing_param_lists_what_is_there(rng):
    _, params = MLP.init(rng, X)
    del params["Affine_1"]["bias"]
    with pytest.raises(errors.ParamNotFoundError, match=r"params/Affine_1/bias.*\['kernel'\]"):
        MLP.call(params, X)


def test_params_of_another_model(rng):
    class Other(nn.Module):
        def apply(self, x):
            return Affine(x, 2, name="proj")

    _, params = Other.init(rng, X)
    with pytest.raises(errors.ParamNotFoundError, match=r"params/Affine_0.*\['proj'\]"):
        MLP.call(params, X)


def test_params_of_wrong_type(rng):
    _, model = MLP.create(rng, X)
    with pytest.raises(errors.ParamsStructureError, match="model.params"):
        MLP.call(model, X)
    params = {"Affine_0": jnp.ones(3), "Affine_1": {}}
    with pytest.raises(errors.ParamsStructureError, match='"Affine_0"'):
        MLP.call(params, X)


def test_name_used_twice_for_modules(rng):
    class Twice(nn.Module):
        def apply(self, x):
            return Affine(x, 2, name="a") + Affine(x, 2, name="a")

    with pytest.raises(errors.NameInUseError, match=r'Twice.*"a".*shared'):
        Twice.init(rng, X)


def test_name_used_for_param_and_module(rng):
    class Clash(nn.Module):
        def apply(self, x):
            self.param("a", (1,), nn.initializers.zeros)
            return Affine(x, 2, name="a")

    with pytest.raises(errors.NameInUseError, match='"a" is used for a module.*parameter'):
        Clash.init(rng, X)


def test_param_declared_twice(rng):
    class Twice(nn.Module):
        def apply(self, x):
            self.param("w", (1,), nn.initializers.zeros)
            self.param("w", (1,), nn.initializers.zeros)

    with pytest.raises(errors.NameInUseError, match='"w"'):
        Twice.init(rng, X)


@pytest.mark.parametrize("name", ["a/b", "a:b", "", 3])
def test_invalid_names(rng, name):
    class Bad(nn.Module):
        def apply(self, x):
            return Affine(x, 2, name=name)

    with pytest.raises(errors.InvalidNameError):
        Bad.init(rng, X)


def test_module_called_outside_apply_says_which_entry_point():
    with pytest.raises(errors.ModuleOutsideApplyError, match=r"Affine.init\(rng"):
        Affine(X, 2)


def test_bad_input_spec(rng):
    with pytest.raises(ValueError, match="input spec"):
        MLP.init_by_shape(rng, ["not a shape"])


def test_stateful_with_wrong_type():
    with pytest.raises(errors.FlaxenError, match="expects a Collection"):
        with nn.stateful({"not": "a collection"}):
            pass
