"""flaxen.jax_utils: pmap-style replicate/unreplicate, pmean, partial_eval_by_shape,
prefetch_to_device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flaxen import jax_utils
from flaxen.errors import FlaxenError


def test_replicate_unreplicate_round_trip():
    """The pre-release meaning: one copy per device stacked on a leading axis."""
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "n": np.int32(3)}
    rep = jax_utils.replicate(tree)
    n = jax.local_device_count()
    assert rep["w"].shape == (n, 2, 3) and rep["n"].shape == (n,)
    assert [s.device for s in rep["w"].addressable_shards] == jax.local_devices()
    for shard in rep["w"].addressable_shards:
        np.testing.assert_array_equal(shard.data[0], tree["w"])
    back = jax_utils.unreplicate(rep)
    assert len(back["w"].sharding.device_set) == 1
    np.testing.assert_array_equal(back["w"], tree["w"])
    assert back["n"] == 3
    two = jax_utils.replicate(tree, jax.devices()[:2])  # the pre-release `devices` list
    assert two["w"].shape == (2, 2, 3)
    with pytest.raises(FlaxenError, match="list of jax devices"):
        jax_utils.replicate(tree, devices="cpu")


def test_pmean_is_a_deprecated_alias():
    with pytest.warns(DeprecationWarning, match="use jax.lax.pmean instead"):
        out = jax.vmap(lambda x: jax_utils.pmean(x, "i"), axis_name="i")(jnp.arange(4.0))
    np.testing.assert_allclose(out, [1.5] * 4)


def test_partial_eval_by_shape():
    calls = []

    def fn(x, scale):
        calls.append(1)
        w = jax.random.normal(jax.random.PRNGKey(0), (3, 2)) * scale
        return x @ w, {"w": w}

    out, params = jax_utils.partial_eval_by_shape(fn, [((4, 3), jnp.float32)], 2.0)
    assert isinstance(out, jax.ShapeDtypeStruct) and out.shape == (4, 2)
    want = jax.random.normal(jax.random.PRNGKey(0), (3, 2)) * 2.0
    np.testing.assert_allclose(params["w"], want, rtol=1e-6)
    (y,) = jax_utils.partial_eval_by_shape(lambda a: (a.sum(),), [(5,)])
    assert isinstance(y, jax.ShapeDtypeStruct) and y.dtype == jnp.float32


def test_prefetch_to_device_order_and_sharding():
    n = jax.device_count()
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    batches = [{"x": np.full((2 * n, 3), i, np.float32)} for i in range(5)]
    pulled = []

    def source():
        for b in batches:
            pulled.append(1)
            yield b

    it = jax_utils.prefetch_to_device(source(), size=2, mesh=mesh)
    first = next(it)
    assert len(pulled) == 2  # one handed out, one more queued ahead
    out = [first, *it]
    assert len(out) == 5
    for i, b in enumerate(out):
        assert b["x"].sharding == NamedSharding(mesh, P("batch"))
        np.testing.assert_array_equal(b["x"], batches[i]["x"])
    assert list(jax_utils.prefetch_to_device(iter([]), 2)) == []
    assert len(list(jax_utils.prefetch_to_device(iter(batches), 0))) == 5
    with pytest.raises(FlaxenError, match="size"):
        next(jax_utils.prefetch_to_device(iter(batches), -1))


def test_partial_eval_by_shape_of_module_init_gives_real_params():
    from flaxen import nn

    class Net(nn.Module):
        def apply(self, x):
            x = nn.Conv(x, 4, (3, 3))
            return nn.Dense(x.reshape((x.shape[0], -1)), 3)

    init = lambda x: Net.init(jax.random.PRNGKey(0), x)  # noqa: E731
    out, params = jax_utils.partial_eval_by_shape(init, [((2, 5, 5, 1), jnp.float32)])
    assert out == jax.ShapeDtypeStruct((2, 3), jnp.float32)
    _, want = Net.init(jax.random.PRNGKey(0), jnp.ones((2, 5, 5, 1)))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
        assert isinstance(a, jax.Array)
        np.testing.assert_allclose(a, b, rtol=1e-6)
