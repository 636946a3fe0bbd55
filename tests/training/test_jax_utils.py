"""flaxen.jax_utils: replicate/unreplicate and prefetch_to_device over a mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flaxen import jax_utils
from flaxen.errors import FlaxenError


def test_replicate_unreplicate_round_trip():
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "n": np.int32(3)}
    rep = jax_utils.replicate(tree)
    assert rep["w"].sharding.is_fully_replicated
    assert len(rep["w"].sharding.device_set) == jax.device_count()
    back = jax_utils.unreplicate(rep)
    assert len(back["w"].sharding.device_set) == 1
    np.testing.assert_array_equal(back["w"], tree["w"])
    two = jax_utils.replicate(tree, jax.devices()[:2])  # the pre-release `devices` list
    assert len(two["w"].sharding.device_set) == min(2, jax.device_count())
    with pytest.raises(FlaxenError, match="Mesh or a non-empty list of devices"):
        jax_utils.replicate(tree, mesh="cpu")


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
