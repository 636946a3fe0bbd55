"""nn.summary: the parameter table (shapes only) and the module table (output shapes, FLOPs
from XLA's compiled cost analysis, checked against hand counts)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import nn
from tests.nn.modules_for_tests import MLP


def tables(text):
    params, _, modules = text.partition("\n\n")
    return params.splitlines(), modules.splitlines()


def module_rows(lines):
    """{label: (class, output, flops)} of the module table (rows between the rules)."""
    rows = {}
    for line in lines[2:]:
        if line.startswith("FLOPs:") or line.startswith("["):
            break
        parts = line.split()
        rows[parts[0]] = (parts[1], " ".join(parts[2:-1]), parts[-1])
    return rows


def flops(text):
    return {k: int(v[2].replace(",", "")) for k, v in module_rows(tables(text)[1]).items()}


def test_summary_of_a_module_class_needs_no_real_params():
    params, modules = tables(nn.summary(MLP, [((2, 3), jnp.float32)], hidden=5))
    assert params[0].split() == ["path", "shape", "dtype", "params", "bytes"]
    rows = {line.split()[0]: line.split() for line in params[2:-2]}
    assert rows["params/Affine_0/kernel"][1:] == ["(3,", "5)", "float32", "15", "60"]
    assert rows["params/Affine_1/bias"][-2:] == ["2", "8"]
    # Module subtotals: Affine_0 has 3*5 + 5 params.
    assert any(line.split()[:2] == ["Affine_0", "(module)"] and line.split()[-2] == "20"
               for line in params)
    assert params[-1].split() == ["total", "32", "128"]  # 15 + 5 + 10 + 2
    assert modules[0].split() == ["module", "class", "output", "FLOPs"]
    out = module_rows(modules)
    assert out["(root)"][:2] == ("MLP", "float32[2, 2]")
    assert out["Affine_0"][:2] == ("Affine", "float32[2, 5]")


class TwoDense(nn.Module):
    def apply(self, x, hidden=32):
        x = nn.relu(nn.Dense(x, features=hidden))
        return nn.Dense(x, features=3)


def test_dense_flops_match_a_hand_count():
    batch, n_in, hidden, n_out = 4, 8, 32, 3
    counted = flops(nn.summary(TwoDense, [((batch, n_in), jnp.float32)], hidden=hidden))
    # A matrix product is 2*b*n*m (multiply and add), the bias add b*m.
    dense_0 = 2 * batch * n_in * hidden + batch * hidden
    dense_1 = 2 * batch * hidden * n_out + batch * n_out
    assert counted["Dense_0"] == dense_0 and counted["Dense_1"] == dense_1
    assert counted["(root)"] == dense_0 + batch * hidden + dense_1  # + the ReLU


class ConvNet(nn.Module):
    def apply(self, x):
        x = nn.Conv(x, features=6, kernel_size=(3, 3), padding="VALID")
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


def test_conv_flops_match_a_hand_count():
    counted = flops(nn.summary(ConvNet, [((2, 10, 10, 3), jnp.float32)]))
    out_positions = 2 * 8 * 8  # batch x 8 x 8 (VALID, 3x3 kernel)
    assert counted["Conv_0"] == 2 * out_positions * 3 * 3 * 3 * 6 + out_positions * 6


class Block(nn.Module):
    def apply(self, x, train=True):
        x = nn.Dense(x, features=4)
        return nn.BatchNorm(x, use_running_average=not train)


class Tower(nn.Module):
    def apply(self, x):
        shared = nn.Dense.shared(features=4, name="shared")
        x = shared(Block(x, name="block"))
        x = nn.dropout(shared(x), rate=0.5)
        return x


def test_nested_shared_and_stateful_modules():
    text = nn.summary(Tower, [((3, 4), jnp.float32)])
    rows = module_rows(tables(text)[1])
    assert list(rows) == ["(root)", "block", "block/Dense_0", "block/BatchNorm_1", "shared"]
    lines = tables(text)[1]
    assert any(line.startswith("shared (x2)") for line in lines)  # called twice
    assert any(line.startswith("  block/BatchNorm_1") for line in lines)  # nested, indented
    counted = flops(text)
    dense = 2 * 3 * 4 * 4 + 3 * 4
    assert counted["shared"] == 2 * dense and counted["block/Dense_0"] == dense
    assert counted["(root)"] > counted["block"] + counted["shared"]  # + the dropout
    assert rows["block/BatchNorm_1"][:2] == ("BatchNorm", "float32[3, 4]")


def test_summary_of_a_model_with_and_without_input_shapes(rng):
    _, params = TwoDense.init(rng, jnp.ones((4, 8)))
    model = nn.Model(TwoDense, params)
    only_params = nn.summary(model)
    assert "\n\n" not in only_params and only_params.splitlines()[-1].split()[-2] == "387"
    with_shapes = nn.summary(model, [((4, 8), jnp.float32)])
    assert with_shapes == nn.summary(TwoDense, [((4, 8), jnp.float32)])


def test_summary_of_a_model_with_bfloat16_params(rng):
    _, params = MLP.init(rng, jnp.ones((2, 3)))
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    model = nn.Model(MLP, params)
    table = nn.summary(model)
    assert "bfloat16" in table and table.splitlines()[-1].split() == ["total", "26", "52"]
    out = module_rows(tables(nn.summary(model, [((2, 3), jnp.bfloat16)]))[1])
    assert out["(root)"][1] == "bfloat16[2, 2]"


def test_summary_of_a_class_without_specs_is_a_clear_error():
    with pytest.raises(ValueError, match="input_specs"):
        nn.summary(MLP)


def test_summary_runs_nothing_and_matches_the_real_output_shape(rng):
    spec = ((5, 8), jnp.float32)
    rows = module_rows(tables(nn.summary(TwoDense, [spec], hidden=7))[1])
    y, _ = TwoDense.init(rng, jnp.ones(spec[0]), hidden=7)
    assert rows["(root)"][1] == f"float32{list(np.shape(y))}"
