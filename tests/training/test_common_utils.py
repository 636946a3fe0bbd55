"""flaxen.training.common_utils against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen.errors import FlaxenError, ShapeError
from flaxen.training import common_utils


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int64])
def test_onehot_matches_numpy(dtype):
    labels = np.array([[0, 2], [1, 4]], dtype)
    got = common_utils.onehot(labels, 4, on_value=0.9, off_value=0.1)
    want = np.where(np.eye(4, dtype=bool)[np.minimum(labels, 3)] & (labels < 4)[..., None],
                    0.9, 0.1).astype(np.float32)
    assert got.shape == (2, 2, 4) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want)
    assert np.all(np.asarray(got)[1, 1] == np.float32(0.1))  # label 4 >= num_classes


def test_onehot_dtype_and_errors():
    assert common_utils.onehot(jnp.array([1]), 2, dtype=jnp.bfloat16).dtype == jnp.bfloat16
    with pytest.raises(ShapeError, match="num_classes"):
        common_utils.onehot(jnp.array([1]), 0)


def test_shard_and_errors():
    n = jax.local_device_count()
    xs = {"x": np.arange(n * 3 * 2).reshape(n * 3, 2), "y": np.arange(n * 3)}
    out = common_utils.shard(xs)
    assert out["x"].shape == (n, 3, 2) and out["y"].shape == (n, 3)
    np.testing.assert_array_equal(out["x"].reshape(n * 3, 2), xs["x"])
    if n > 1:
        with pytest.raises(ShapeError, match=r"batch leaf y.*multiple of the"):
            common_utils.shard({"y": np.arange(n + 1)})
    with pytest.raises(ShapeError, match="scalar"):
        common_utils.shard({"z": np.float32(1)})
    assert common_utils.shard_prng_key(jax.random.PRNGKey(0)).shape == (n, 2)


def test_stack_forest():
    forest = [{"a": np.full(2, i), "b": (i, np.float32(i))} for i in range(3)]
    out = common_utils.stack_forest(forest)
    np.testing.assert_array_equal(out["a"], [[0, 0], [1, 1], [2, 2]])
    np.testing.assert_array_equal(out["b"][0], [0, 1, 2])
    with pytest.raises(FlaxenError, match="structure"):
        common_utils.stack_forest([{"a": 1}, {"b": 1}])
    with pytest.raises(FlaxenError, match="empty"):
        common_utils.stack_forest([])


def test_get_metrics_jit_and_pmap_style():
    step = jax.jit(lambda i: {"loss": i * 2.0, "acc": jnp.ones(2) * i})
    metrics = common_utils.get_metrics([step(jnp.float32(i)) for i in range(3)])
    assert isinstance(metrics["loss"], np.ndarray)
    np.testing.assert_allclose(metrics["loss"], [0.0, 2.0, 4.0])
    assert metrics["acc"].shape == (3, 2)

    n = jax.local_device_count()
    pstep = jax.pmap(lambda x: {"loss": jax.lax.pmean(x, "d")}, axis_name="d")
    device_metrics = [pstep(jnp.arange(n, dtype=jnp.float32) + i) for i in range(2)]
    out = common_utils.get_metrics(device_metrics)
    np.testing.assert_allclose(out["loss"], [(n - 1) / 2, (n - 1) / 2 + 1])
    # Explicit override: host arrays with a device axis.
    host = [{"m": np.array([i, 99])} for i in range(2)]
    np.testing.assert_array_equal(common_utils.get_metrics(host, unreplicate=True)["m"], [0, 1])
