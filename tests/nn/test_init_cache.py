"""``init_by_shape`` reuses its compiled program for the same module, shapes and arguments."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import nn
from flaxen.nn import init_cache

TRACES: list[tuple] = []


class Counted(nn.Module):
    """A Dense whose ``apply`` records each run (it only runs while being traced)."""

    def apply(self, x, features=3, scale=1.0):
        TRACES.append((x.shape, features))
        return nn.Dense(x, features) * scale


@pytest.fixture(autouse=True)
def _fresh():
    init_cache.clear()
    TRACES.clear()
    yield
    init_cache.clear()


def _shapes(tree):
    return jax.tree.map(lambda a: (a.shape, a.dtype), tree)


def test_second_call_runs_no_trace_and_gives_the_same_params():
    key = jax.random.PRNGKey(0)
    out1, p1 = Counted.init_by_shape(key, [((2, 4), jnp.float32)])
    assert len(TRACES) == 1
    out2, p2 = Counted.init_by_shape(key, [((2, 4), jnp.float32)])
    assert len(TRACES) == 1, "the cached call traced apply again"
    assert init_cache.stats["hits"] == 1
    assert out2 == out1 == jax.ShapeDtypeStruct((2, 3), jnp.float32)
    assert _shapes(p2) == _shapes(p1)
    jax.tree.map(np.testing.assert_array_equal, p1, p2)
    # The same values as init on real inputs (the reference), and a new key gives new ones.
    _, p3 = Counted.init_by_shape(jax.random.PRNGKey(1), [((2, 4), jnp.float32)])
    assert len(TRACES) == 1
    _, ref = Counted.init(key, jnp.zeros((2, 4)))
    jax.tree.map(np.testing.assert_array_equal, p1, ref)
    assert not np.array_equal(p3["Dense_0"]["kernel"], p1["Dense_0"]["kernel"])


def _compile_log(fn) -> list[str]:
    """JAX's ``log_compiles`` messages while ``fn()`` runs."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            fn()
    finally:
        logger.removeHandler(handler)
    return [r for r in records if "Compiling" in r or "tracing" in r]


def test_cached_call_traces_and_compiles_nothing():
    key = jax.random.PRNGKey(0)
    first = _compile_log(lambda: Counted.init_by_shape(key, [(2, 4)]))
    assert first, "log_compiles saw nothing: the check below could not fail"
    assert _compile_log(lambda: Counted.init_by_shape(key, [(2, 4)])) == []


@pytest.mark.parametrize("call", [
    lambda k: Counted.init_by_shape(k, [(3, 4)]),  # another shape
    lambda k: Counted.init_by_shape(k, [((2, 4), jnp.bfloat16)]),  # another dtype
    lambda k: Counted.init_by_shape(k, [(2, 4)], features=5),  # another kwarg
    lambda k: Counted.init_by_shape(k, [(2, 4)], scale=1),  # 1 == 1.0, but another type
    lambda k: Counted.partial(features=5).init_by_shape(k, [(2, 4)]),  # partial args
    lambda k: Counted.init_by_shape(k, [(2, 4)], name="other"),  # another name
])
def test_key_distinguishes_shapes_dtypes_and_arguments(call):
    key = jax.random.PRNGKey(0)
    Counted.init_by_shape(key, [(2, 4)], scale=1.0)
    assert len(TRACES) == 1
    call(key)
    assert len(TRACES) == 2, "a different call reused the cached program"


def test_unhashable_arguments_are_not_cached_but_work():
    key = jax.random.PRNGKey(0)
    scale = jnp.float32(2.0)  # an array: not hashable
    for _ in range(2):
        out, params = Counted.init_by_shape(key, [(2, 4)], scale=scale)
        assert out.shape == (2, 3) and params["Dense_0"]["kernel"].shape == (4, 3)
    assert len(TRACES) == 2 and init_cache.stats["uncacheable"] == 2


def test_cache_is_bounded():
    key = jax.random.PRNGKey(0)
    for n in range(init_cache.MAX_ENTRIES + 3):
        Counted.init_by_shape(key, [(1, n + 1)])
    assert len(init_cache._ENTRIES) == init_cache.MAX_ENTRIES
