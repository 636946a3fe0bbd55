"""nn.summary: one row per parameter, a subtotal per module, totals; shapes only."""

import jax
import jax.numpy as jnp
import pytest

from flaxen import nn
from tests.nn.modules_for_tests import MLP


def test_summary_of_a_module_class_needs_no_real_params():
    table = nn.summary(MLP, [((2, 3), jnp.float32)], hidden=5)
    lines = table.splitlines()
    assert lines[0].split() == ["path", "shape", "dtype", "params", "bytes"]
    rows = {line.split()[0]: line.split() for line in lines[2:-2]}
    assert rows["params/Affine_0/kernel"][1:] == ["(3,", "5)", "float32", "15", "60"]
    assert rows["params/Affine_1/bias"][-2:] == ["2", "8"]
    # Module subtotals: Affine_0 has 3*5 + 5 params.
    assert any(line.split()[:2] == ["Affine_0", "(module)"] and line.split()[-2] == "20"
               for line in lines)
    assert lines[-1].split() == ["total", "32", "128"]  # 15 + 5 + 10 + 2


def test_summary_of_a_model_and_of_bfloat16_params(rng):
    _, params = MLP.init(rng, jnp.ones((2, 3)))
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    table = nn.summary(nn.Model(MLP, params))
    assert "bfloat16" in table and table.splitlines()[-1].split() == ["total", "26", "52"]


def test_summary_of_a_class_without_specs_is_a_clear_error():
    with pytest.raises(ValueError, match="input_specs"):
        nn.summary(MLP)


def test_summary_of_a_model_with_state_and_root_params(rng):
    class Net(nn.Module):
        def apply(self, x):
            x = nn.BatchNorm(x)  # needs a state collection: summary opens one
            return x * self.param("gain", (3,), nn.initializers.ones).reshape((1, 3))

    lines = nn.summary(Net, [((2, 3), jnp.float32)]).splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:-2]}
    assert rows["params/BatchNorm_0/scale"][-2:] == ["3", "12"]
    assert rows["params/gain"][-2:] == ["3", "12"]
    # Subtotals: modules by their path, the root module by its class.
    assert any(line.split()[:2] == ["BatchNorm_0", "(module)"] for line in lines)
    assert any(line.split()[:2] == ["Net", "(module)"] and line.split()[-2] == "3"
               for line in lines)
