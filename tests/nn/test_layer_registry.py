"""Cross-cutting checks over every layer in layer_registry.CASES, one test per property.

For each layer: jit without a retrace on a second call, vmap equal to per-example calls,
grad finite and nonzero, bfloat16 compute, the model summary, the parameter (and state)
layout against tests/nn/golden/<name>.json, and a checkpoint round trip. A layer is
initialised once (jitted) and shared by its tests. Regenerate the golden files after a
deliberate layout change with
``FLAXEN_UPDATE_GOLDEN=1 python -m pytest tests/nn/test_layer_registry.py``.
"""

import dataclasses
import inspect
import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import nn
from flaxen.training import checkpoints
from flaxen.traverse_util import path_to_str
from tests.nn.layer_registry import CASES

GOLDEN = pathlib.Path(__file__).parent / "golden"
KEY = jax.random.PRNGKey(42)
IDS = [c.name for c in CASES]


def _init(case, inputs):
    if case.stateful:
        return case.module.init_with_state(KEY, *inputs, **case.kwargs)
    out, params = case.module.init(KEY, *inputs, **case.kwargs)
    return out, params, None


def _call(case, params, state, inputs, rng, **extra):
    kw = {**case.kwargs, **extra}
    rng = rng if case.stochastic else None
    if case.stateful:
        return case.module.call_with_state(params, state, *inputs, _rng=rng, **kw)[0]
    return case.module.call(params, *inputs, _rng=rng, **kw)


@dataclasses.dataclass
class Initialized:
    """A layer initialised on its example input, and a jitted call of it."""

    inputs: Any
    other: Any  # a second input of the same shapes, other values
    out: Any  # the output of init
    params: Any
    state: Any  # a Collection for stateful layers, else None
    call: Any  # jit((params, state, inputs, rng) -> output)


_INITIALIZED: dict[str, Initialized] = {}


def initialized(case) -> Initialized:
    """The case initialised once per test session (each init and call compiles)."""
    if case.name not in _INITIALIZED:
        inputs = case.make_inputs(jax.random.PRNGKey(0))
        other = case.make_inputs(jax.random.PRNGKey(1))
        out, params, state = jax.jit(lambda x: _init(case, x))(inputs)
        call = jax.jit(lambda p, s, x, r: _call(case, p, s, x, r))
        _INITIALIZED[case.name] = Initialized(inputs, other, out, params, state, call)
    return _INITIALIZED[case.name]


def _close(a, b, tol=1e-5, what=""):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(
        np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=tol, atol=tol,
        err_msg=what), a, b)


def _floating(x):
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def _spec(v):
    return f"{jnp.asarray(v).dtype}{list(jnp.shape(v))}"


def _layout(params, state):
    """``{"params/Dense_0/kernel": "float32[3, 4]", "state/mean": ...}``: every path spelled
    by ``traverse_util.path_to_str``, as flaxen prints and checkpoints it."""
    tree = {"params": params, **({"state": state} if state is not None else {})}
    return {path_to_str(path): _spec(v)
            for path, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jit_without_retrace(case):
    """A jitted call reproduces init's output and does not retrace for new values."""
    layer = initialized(case)
    traces = []

    def call(params, state, inputs, rng):
        traces.append(1)
        return _call(case, params, state, inputs, rng)

    jcall = jax.jit(call)
    got = jcall(layer.params, layer.state, layer.inputs, KEY)
    if not case.stochastic:
        _close(got, layer.out, what="call after init differs from the init output")
    jcall(layer.params, layer.state, layer.other, jax.random.PRNGKey(2))
    assert len(traces) == 1, f"{case.name} retraced on a second call with new values"
    if case.stochastic:
        again = jcall(layer.params, layer.state, layer.inputs, jax.random.PRNGKey(3))
        assert not np.array_equal(np.asarray(got), np.asarray(again)), "same mask twice"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vmap_equals_per_example_calls(case):
    if not case.vmap:
        pytest.skip(f"{case.name} is registered with vmap=False")
    layer = initialized(case)
    batched = jax.tree.map(lambda *a: jnp.stack(a), layer.inputs, layer.other)
    vm = jax.jit(jax.vmap(lambda inp, r: _call(case, layer.params, layer.state, inp, r),
                          in_axes=(0, None)))(batched, KEY)
    want = jax.tree.map(lambda *a: jnp.stack(a),
                        layer.call(layer.params, layer.state, layer.inputs, KEY),
                        layer.call(layer.params, layer.state, layer.other, KEY))
    _close(vm, want, 1e-4, what="vmap")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_grad_is_finite_and_nonzero(case):
    """Gradients of a sum of squares: shaped like the params (the inputs for param-free
    layers), finite, and not all zero."""
    layer = initialized(case)

    def loss(params, inputs, rng):
        leaves = [jnp.sum(jnp.square(o.astype(jnp.float32)))
                  for o in jax.tree.leaves(_call(case, params, layer.state, inputs, rng))]
        return sum(leaves[1:], leaves[0])

    argnum = 0 if jax.tree.leaves(layer.params) else 1
    grads = jax.jit(jax.grad(loss, argnums=argnum))(layer.params, layer.inputs, KEY)
    if argnum == 0:
        assert jax.tree.structure(grads) == jax.tree.structure(layer.params)
    leaves = [np.asarray(g, np.float32) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(g).all() for g in leaves), "non-finite gradient"
    assert any(np.abs(g).sum() > 0 for g in leaves), "all-zero gradient"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bfloat16_compute(case):
    """bfloat16 outputs close to float32 ones; the params stay float32."""
    layer = initialized(case)
    inp16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16) if _floating(a) else a,
                         layer.inputs)
    if case.bf16 in ("dtype", "both"):
        inputs = inp16 if case.bf16 == "both" else layer.inputs
        out16 = jax.jit(lambda p, s, x, r: _call(case, p, s, x, r, dtype=jnp.bfloat16))(
            layer.params, layer.state, inputs, KEY)
    else:
        out16 = layer.call(layer.params, layer.state, inp16, KEY)
    out32 = layer.call(layer.params, layer.state, layer.inputs, KEY)
    for o16, o32 in zip(jax.tree.leaves(out16), jax.tree.leaves(out32), strict=True):
        assert o16.dtype == jnp.bfloat16, f"{case.name} output is {o16.dtype}"
        np.testing.assert_allclose(np.asarray(o16, np.float32), np.asarray(o32), rtol=0.1,
                                   atol=0.1)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(layer.params))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_summary_lists_every_parameter(case):
    layer = initialized(case)
    table = nn.summary(layer.params)
    total = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(layer.params))
    assert f"{total:,}" in table or str(total) in table
    for name in _layout(layer.params, None):
        assert name in table, f"{name} missing from the summary"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_golden_layout(case):
    """The parameter (and state) paths, dtypes and shapes match tests/nn/golden."""
    layer = initialized(case)
    layout = _layout(layer.params, layer.state)
    path = GOLDEN / f"{case.name}.json"
    if os.environ.get("FLAXEN_UPDATE_GOLDEN"):
        path.write_text(json.dumps(layout, indent=2, sort_keys=True) + "\n")
    assert path.exists(), f"missing {path}; run with FLAXEN_UPDATE_GOLDEN=1 to create it"
    assert layout == json.loads(path.read_text()), f"{case.name} parameter layout changed"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_checkpoint_round_trip(case, tmp_path):
    """save_checkpoint then restore_checkpoint into zeros gives the Model (and state)
    back bit for bit, with the same dtypes, and the restored Model computes the same."""
    layer = initialized(case)
    model = nn.Model(case.module, layer.params)
    target = {"model": model}
    if layer.state is not None:
        target["state"] = layer.state.as_dict()
    checkpoints.save_checkpoint(tmp_path, target, step=1)
    template = jax.tree.map(jnp.zeros_like, target)
    restored = checkpoints.restore_checkpoint(tmp_path, template)
    assert restored["model"].module is case.module
    assert jax.tree.structure(restored) == jax.tree.structure(target)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    state = layer.state.with_state(restored["state"]) if layer.state is not None else None
    out = layer.call(restored["model"].params, state, layer.inputs, KEY)
    _close(out, layer.call(layer.params, layer.state, layer.inputs, KEY), 0.0,
           what="restored model output")


def _registered_classes():
    """The Module classes the registry covers (a partial counts as its base class)."""
    covered = set()
    for case in CASES:
        covered.update(c for c in inspect.getmro(case.module)
                       if issubclass(c, nn.Module) and c is not nn.Module)
    return covered


def test_every_public_layer_is_in_the_registry():
    public = {name: obj for name, obj in vars(nn).items()
              if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj is not nn.Module}
    missing = sorted(name for name, cls in public.items() if cls not in _registered_classes())
    assert not missing, (f"public layers without a case in tests/nn/layer_registry.py: "
                         f"{missing}. Add a LayerCase (and its golden file) for each.")


def test_every_golden_file_has_a_case():
    orphans = sorted({p.stem for p in GOLDEN.glob("*.json")} - set(IDS))
    assert not orphans, f"golden files without a registry case: {orphans}"
    assert len(IDS) == len(set(IDS)), "two registry cases share a name"
