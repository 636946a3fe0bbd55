"""Cross-cutting checks over every layer in layer_registry.CASES.

For each layer: init then call, jit and no recompilation on a second call, vmap equal to
per-example calls, grad finite and nonzero, bfloat16 compute, the parameter (and state)
layout against tests/nn/golden/<name>.json, and the model summary. Everything after init
runs jitted, so each layer costs a handful of compilations. Regenerate the golden files
after a deliberate layout change with
``FLAXEN_UPDATE_GOLDEN=1 python -m pytest tests/nn/test_layer_registry.py``.
"""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import nn
from flaxen.traverse_util import path_to_str
from tests.nn.layer_registry import CASES

GOLDEN = pathlib.Path(__file__).parent / "golden"
KEY = jax.random.PRNGKey(42)


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


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_layer(case):
    inputs = case.make_inputs(jax.random.PRNGKey(0))
    other = case.make_inputs(jax.random.PRNGKey(1))
    out, params, state = jax.jit(lambda x: _init(case, x))(inputs)

    # jit, and no retrace on a second call with new values.
    traces = []

    def call(params, state, inputs, rng):
        traces.append(1)
        return _call(case, params, state, inputs, rng)

    jcall = jax.jit(call)
    got = jcall(params, state, inputs, KEY)
    if not case.stochastic:
        _close(got, out, what="call after init differs from the init output")
    got_other = jcall(params, state, other, jax.random.PRNGKey(2))
    assert len(traces) == 1, f"{case.name} retraced on a second call with new values"
    if case.stochastic:
        again = jcall(params, state, inputs, jax.random.PRNGKey(3))
        assert not np.array_equal(np.asarray(got), np.asarray(again)), "same mask twice"

    # vmap over a new leading axis equals the per-example calls.
    if case.vmap:
        batched = jax.tree.map(lambda *a: jnp.stack(a), inputs, other)
        vm = jax.jit(jax.vmap(lambda inp, r: _call(case, params, state, inp, r),
                              in_axes=(0, None)))(batched, KEY)
        want = jax.tree.map(lambda *a: jnp.stack(a), got, jcall(params, state, other, KEY))
        _close(vm, want, 1e-4, what="vmap")
    del got_other

    # grad: finite, nonzero, and shaped like the params (inputs for param-free layers).
    def loss(params, inputs, rng):
        leaves = [jnp.sum(jnp.square(o.astype(jnp.float32)))
                  for o in jax.tree.leaves(_call(case, params, state, inputs, rng))]
        return sum(leaves[1:], leaves[0])

    argnum = 0 if jax.tree.leaves(params) else 1
    grads = jax.jit(jax.grad(loss, argnums=argnum))(params, inputs, KEY)
    if argnum == 0:
        assert jax.tree.structure(grads) == jax.tree.structure(params)
    leaves = [np.asarray(g, np.float32) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(g).all() for g in leaves), "non-finite gradient"
    assert any(np.abs(g).sum() > 0 for g in leaves), "all-zero gradient"

    # bfloat16 compute: bf16 outputs close to float32, params stay float32.
    if case.bf16 == "dtype":
        out16 = jax.jit(lambda p, s, x, r: _call(case, p, s, x, r, dtype=jnp.bfloat16))(
            params, state, inputs, KEY)
    else:
        inp16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16) if _floating(a) else a, inputs)
        out16 = jcall(params, state, inp16, KEY)
    for o16, o32 in zip(jax.tree.leaves(out16), jax.tree.leaves(got)):
        assert o16.dtype == jnp.bfloat16, f"{case.name} output is {o16.dtype}"
        np.testing.assert_allclose(np.asarray(o16, np.float32), np.asarray(o32), rtol=0.1,
                                   atol=0.1)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))

    # Parameter (and state) layout against the golden file.
    layout = _layout(params, state)
    path = GOLDEN / f"{case.name}.json"
    if os.environ.get("FLAXEN_UPDATE_GOLDEN"):
        path.write_text(json.dumps(layout, indent=2, sort_keys=True) + "\n")
    assert path.exists(), f"missing {path}; run with FLAXEN_UPDATE_GOLDEN=1 to create it"
    assert layout == json.loads(path.read_text()), f"{case.name} parameter layout changed"

    # The model summary lists every parameter and the total.
    table = nn.summary(params)
    total = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    assert f"{total:,}" in table or str(total) in table
    for name in (p for p in layout if p.startswith("params/")):
        assert name in table, f"{name} missing from the summary"
