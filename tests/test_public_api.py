"""The public API of flaxen's packages is pinned here, so that a change to it is deliberate.

A package's public names are those its ``__init__.py`` binds (imports, assignments,
definitions) without a leading underscore. If this test fails because you added, renamed
or removed a public name on purpose, update the list below in the same commit (and the
docs, and the changelog where there is one).
"""

import ast
import importlib
import pathlib

import pytest

PUBLIC_API = {
    "flaxen": [
        "errors", "jax_utils", "metrics", "nn", "optim", "parallel", "serialization",
        "sharding", "struct", "training", "traverse_util",
    ],
    "flaxen.nn": [
        "BatchNorm", "Collection", "Conv", "ConvTranspose", "Dense", "DenseGeneral", "Embed",
        "GRUCell", "GroupNorm", "LSTMCell", "LayerNorm", "Model", "Module", "ModuleState",
        "MultiHeadDotProductAttention", "RMSNorm", "RNN", "ScanLayers", "SelfAttention",
        "attention",
        "avg_pool", "capture_module_outputs", "celu", "dot_product_attention", "dropout",
        "elu", "export", "gelu", "get_state", "glu", "hard_tanh", "initializers",
        "is_stateful", "is_stochastic", "leaky_relu", "log_sigmoid", "log_softmax",
        "make_attention_mask", "make_causal_mask", "make_padding_mask", "make_rng",
        "max_pool", "module", "module_method", "pool", "relu", "relu6", "selu", "sigmoid",
        "silu", "soft_sign", "softmax", "softplus", "stack_layers", "stateful", "stochastic",
        "summary", "swish", "tanh", "unstack_layers", "utils",
    ],
    "flaxen.optim": [
        "Adafactor", "Adagrad", "Adam", "DynamicScale", "DynamicScaleResult",
        "GradientDescent", "LAMB", "LARS", "ModelParamTraversal", "Momentum",
        "MultiOptimizer", "Optax", "Optimizer", "OptimizerDef", "OptimizerState", "RMSProp",
        "SGD", "WeightNorm", "check_finite", "schedules",
    ],
    "flaxen.training": [
        "checkpoints", "common_utils", "lr_schedule", "prefetch_iterator",
    ],
}


def declared_names(package: str) -> list[str]:
    """The names ``package/__init__.py`` binds at top level, without a leading underscore."""
    module = importlib.import_module(package)
    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
    return sorted(n for n in names if not n.startswith("_"))


@pytest.mark.parametrize("package", sorted(PUBLIC_API))
def test_public_api_is_pinned(package):
    got = declared_names(package)
    want = sorted(PUBLIC_API[package])
    added, removed = sorted(set(got) - set(want)), sorted(set(want) - set(got))
    assert got == want, (
        f"The public API of {package} changed: added {added}, removed {removed}. If this "
        "is deliberate, update PUBLIC_API in tests/test_public_api.py in the same commit.")


@pytest.mark.parametrize("package", sorted(PUBLIC_API))
def test_every_pinned_name_exists(package):
    module = importlib.import_module(package)
    missing = [n for n in PUBLIC_API[package] if not hasattr(module, n)]
    assert not missing, f"{package} does not provide {missing}"
