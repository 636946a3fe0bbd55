"""``jax.export`` of functions that take and return Models and Collections.

Each artifact is serialized here and deserialized and run in a fresh Python process, as a
serving process would. The params-dict route is run in a process that never imports flaxen.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import nn
from flaxen.errors import SerializationError
from tests.nn.modules_for_tests import MLP, Counter

pytest.importorskip("flatbuffers", reason="jax.export serialization needs flatbuffers")

REPO = Path(__file__).resolve().parents[2]


def _run_fresh(tmp_path: Path, script: str, pythonpath: str) -> str:
    """Runs ``script`` in a new process (one CPU device) and returns its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    env.update(PYTHONPATH=pythonpath, JAX_PLATFORMS="cpu")
    (tmp_path / "serve.py").write_text(textwrap.dedent(script))
    done = subprocess.run([sys.executable, str(tmp_path / "serve.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_model_and_collection_round_trip_in_fresh_process(tmp_path):
    x = jnp.arange(6.0).reshape(2, 3)
    module = MLP.partial(hidden=5)
    _, params = module.init(jax.random.PRNGKey(0), x)
    model = nn.Model(module, params)
    _, _, state = Counter.init_with_state(jax.random.PRNGKey(0), x)

    def f(model, state, x):
        y, new_state = Counter.call_with_state({}, state, model(x))
        return nn.Model(model.module, model.params), new_state, y

    exported = jax.export.export(jax.jit(f))(model, state, x)
    (tmp_path / "f.bin").write_bytes(exported.serialize())
    np.save(tmp_path / "x.npy", np.asarray(x))
    np.save(tmp_path / "want.npy", np.asarray(model(x)))
    out = _run_fresh(tmp_path, """
        import jax, numpy as np
        from flaxen import nn
        from tests.nn.modules_for_tests import MLP, Counter
        exp = jax.export.deserialize(bytearray(open("f.bin", "rb").read()))
        x = np.load("x.npy")
        _, params = MLP.partial(hidden=5).init(jax.random.PRNGKey(0), x)
        _, _, state = Counter.init_with_state(jax.random.PRNGKey(0), x)
        model_out, new_state, y = exp.call(nn.Model(MLP.partial(hidden=5), params), state, x)
        assert isinstance(model_out, nn.Model) and model_out.module is MLP.partial(hidden=5)
        assert isinstance(new_state, nn.Collection)
        np.testing.assert_allclose(np.asarray(y), np.load("want.npy"), rtol=1e-6)
        print("count", *[int(v) for v in jax.tree.leaves(new_state)])
    """, pythonpath=str(REPO))
    assert out.split() == ["count", "1"]


def test_params_dict_route_serves_without_flaxen(tmp_path):
    x = jnp.arange(6.0).reshape(2, 3)
    _, params = MLP.init(jax.random.PRNGKey(0), x)
    exported = jax.export.export(jax.jit(MLP.call))(params, x)
    (tmp_path / "f.bin").write_bytes(exported.serialize())
    np.save(tmp_path / "x.npy", np.asarray(x))
    np.save(tmp_path / "want.npy", np.asarray(MLP.call(params, x)))
    flat = {"/".join(str(k.key) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(tmp_path / "params.npz", **flat)
    out = _run_fresh(tmp_path, """
        import sys, jax, numpy as np
        exp = jax.export.deserialize(bytearray(open("f.bin", "rb").read()))
        params = {}
        for key, value in np.load("params.npz").items():
            *parents, leaf = key.split("/")
            node = params
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        y = exp.call(params, np.load("x.npy"))
        np.testing.assert_allclose(np.asarray(y), np.load("want.npy"), rtol=1e-6)
        print("flaxen imported:", any(m.startswith("flaxen") for m in sys.modules))
    """, pythonpath="")
    assert out.strip() == "flaxen imported: False"


@pytest.mark.parametrize("module", [
    nn.Conv.partial(features=2, kernel_size=(3, 3), padding=((1, 1), (0, 0))),
    nn.Dense.partial(features=3, name="head"),
])
def test_partial_arguments_come_back_as_the_same_class(module):
    x = jnp.ones((1, 4, 4, 2))
    _, params = module.init(jax.random.PRNGKey(0), x)
    model = nn.Model(module, params)
    exported = jax.export.export(jax.jit(lambda m, x: m(x)))(model, x)
    restored = jax.export.deserialize(exported.serialize())
    np.testing.assert_allclose(restored.call(model, x), model(x), rtol=1e-6)


def test_non_json_partial_arguments_are_refused_at_export():
    module = nn.Dense.partial(features=2, kernel_init=nn.initializers.zeros)
    _, params = module.init(jax.random.PRNGKey(0), jnp.ones((1, 3)))
    exported = jax.export.export(jax.jit(lambda m, x: m(x)))(nn.Model(module, params),
                                                             jnp.ones((1, 3)))
    with pytest.raises(SerializationError, match=r"kernel_init.*not JSON values.*Module.call"):
        exported.serialize()


def test_class_that_cannot_be_found_again_is_refused_at_export():
    def make():
        class Hidden(nn.Module):
            def apply(self, x):
                return x * 2.0
        return Hidden

    model = nn.Model(make(), {})
    exported = jax.export.export(jax.jit(lambda m, x: m(x)))(model, jnp.ones(2))
    with pytest.raises(SerializationError, match="Hidden.*top level"):
        exported.serialize()
