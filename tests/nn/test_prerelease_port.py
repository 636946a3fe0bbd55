"""Pre-release behaviours of flaxen.nn (issue #12 item 5) and argument errors (#13, #14)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import errors, nn

KEY = jax.random.PRNGKey(0)


def _dtype_required(key, shape, dtype):  # no default: must be called with three arguments
    return jax.random.normal(key, shape, dtype)


# -- initializers: init(key, shape, dtype) --------------------------------------------------


@pytest.mark.parametrize("layer, x, kw", [
    (nn.Dense, jnp.ones((2, 3)), {"features": 4, "kernel_init": _dtype_required,
                                  "bias_init": _dtype_required}),
    (nn.DenseGeneral, jnp.ones((2, 3)), {"features": (2, 2), "kernel_init": _dtype_required}),
    (nn.Conv, jnp.ones((1, 4, 4, 2)), {"features": 3, "kernel_size": (3, 3),
                                       "kernel_init": _dtype_required}),
    (nn.ConvTranspose, jnp.ones((1, 4, 4, 2)), {"features": 3, "kernel_size": (2, 2),
                                                "kernel_init": _dtype_required}),
    (nn.Embed, jnp.array([1, 2]), {"num_embeddings": 5, "features": 3,
                                   "embedding_init": _dtype_required}),
    (nn.LayerNorm, jnp.ones((2, 3)), {"scale_init": _dtype_required}),
])
def test_initializer_with_required_dtype(layer, x, kw):
    _, params = layer.init(KEY, x, **kw)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_initializer_dtype_reaches_param_dtype_and_two_arg_init_still_works():
    _, params = nn.Dense.init(KEY, jnp.ones((2, 3)), features=4, param_dtype=jnp.bfloat16,
                              kernel_init=_dtype_required)
    assert params["kernel"].dtype == jnp.bfloat16
    two_arg = lambda key, shape: jnp.full(shape, 0.5)  # noqa: E731 (pre-release style)
    _, params = nn.Dense.init(KEY, jnp.ones((2, 3)), features=4, kernel_init=two_arg)
    np.testing.assert_array_equal(params["kernel"], np.full((3, 4), 0.5))

    class Own(nn.Module):
        def apply(self, x):
            return x * self.param("w", (3,), _dtype_required)

    _, params = Own.init(KEY, jnp.ones(3))
    np.testing.assert_allclose(params["w"], jax.random.normal(
        nn.base.fold_in_str(KEY, "w"), (3,), jnp.float32))


# -- Collection (reference 1.12) --------------------------------------------------------


class Counter(nn.Module):
    def apply(self, x, coll):
        seen = coll.retrieve()
        if self.is_initializing():
            coll.store(x)
            return x
        return x + seen


def test_collection_store_at_init_read_at_call_in_one_scope():
    x = jnp.arange(3.0)
    with nn.Collection().mutate() as coll:
        _, params = Counter.init(KEY, x, coll=coll)
        y = Counter.call(params, x * 10, coll=coll)
    np.testing.assert_array_equal(y, x * 11)
    assert set(coll.state) == {"/"} and set(coll.as_dict()) == {"/"}
    np.testing.assert_array_equal(coll.state["/"], x)
    with pytest.raises(TypeError):
        coll.state["/other"] = 1  # read-only view; writes go through store()


def test_collection_store_errors():
    with nn.Collection().mutate() as coll:
        with pytest.raises(errors.CollectionScopeError, match="inside a module's apply"):
            coll.store(1)

    class StoresInOwn(nn.Module):
        def apply(self, x):
            with nn.Collection().mutate() as own:
                own.store(x)
            return x

    with pytest.raises(errors.CollectionScopeError, match="stored from within a"):
        StoresInOwn.init(KEY, jnp.ones(2))

    class Child(nn.Module):
        def apply(self, x, coll):
            coll.store(x)
            return x

    class Outer(nn.Module):
        def apply(self, x):
            shared = Child.shared(name="child")
            with nn.Collection().mutate() as here:
                shared(x, coll=here)

            class Inner(nn.Module):
                def apply(self, x):
                    with nn.Collection().mutate() as inner:
                        return shared(x, coll=inner)

            return Inner(x)

    with pytest.raises(errors.CollectionScopeError, match="outside the scope"):
        Outer.init(KEY, jnp.ones(2))


def test_collection_two_unnamed_top_level_stores():
    class Store(nn.Module):
        def apply(self, x, coll):
            coll.store(x)
            return x

    with nn.Collection().mutate() as coll:
        Store.init(KEY, jnp.ones(1), coll=coll)
        with pytest.raises(errors.CollectionScopeError, match="should have a name"):
            Store.init(KEY, jnp.ones(1), coll=coll)
    with nn.Collection().mutate() as coll:
        Store.init(KEY, jnp.ones(1), coll=coll, name="a")
        Store.init(KEY, jnp.zeros(1), coll=coll, name="b")
    assert set(coll.as_dict()) == {"/a", "/b"}


# -- nn.utils (reference 1.15) ----------------------------------------------------------


def test_nn_utils():
    stack = nn.utils.CallStack()
    with stack.frame() as outer:
        with stack.frame({"k": 1}) as inner:
            assert len(stack) == 2 and stack[0] is outer and list(stack) == [outer, inner]
    assert outer == {} and len(stack) == 0

    class A:
        @nn.utils.classproperty
        def tag(cls):
            return cls.__name__ + "!"

    class B(A):
        pass

    assert (A.tag, B.tag, B().tag) == ("A!", "B!", "B!")


# -- layer arguments (#14 item 10, #13 item 7) ----------------------------------------


@pytest.mark.parametrize("features", [0, -3, 2.5, True])
def test_dense_features(features):
    with pytest.raises(errors.LayerArgumentError, match=r'"Dense": features: expected a '
                       r"positive int .* got " + str(features)):
        nn.Dense.init(KEY, jnp.ones((2, 3)), features=features)


def test_dense_general_embed_conv_features():
    with pytest.raises(errors.LayerArgumentError, match="features"):
        nn.DenseGeneral.init(KEY, jnp.ones((2, 3)), features=(2, 0))
    with pytest.raises(errors.LayerArgumentError, match="num_embeddings"):
        nn.Embed.init(KEY, jnp.array([1]), num_embeddings=0, features=3)
    for layer in (nn.Conv, nn.ConvTranspose):
        with pytest.raises(errors.LayerArgumentError, match=f'"{layer.__name__}": features'):
            layer.init(KEY, jnp.ones((1, 4, 4, 2)), features=0, kernel_size=(3, 3))


@pytest.mark.parametrize("kw, name", [({"strides": 0}, "strides"),
                                      ({"strides": (1, -1)}, "strides"),
                                      ({"kernel_dilation": 0}, "kernel_dilation"),
                                      ({"input_dilation": (0, 1)}, "input_dilation")])
def test_conv_positive_arguments(kw, name):
    with pytest.raises(errors.LayerArgumentError, match=f'"Conv": {name}: expected 2 positive'):
        nn.Conv.init(KEY, jnp.ones((1, 5, 5, 2)), features=3, kernel_size=(3, 3), **kw)
    if name != "input_dilation":
        with pytest.raises(errors.LayerArgumentError, match=name):
            nn.ConvTranspose.init(KEY, jnp.ones((1, 5, 5, 2)), features=3,
                                  kernel_size=(3, 3), **kw)


def test_conv_rank3_input_message_names_what_was_passed():
    _, params = nn.Conv.init(KEY, jnp.ones((2, 5, 5, 1)), features=3, kernel_size=(3, 3))
    with pytest.raises(errors.ShapeError) as e:
        nn.Conv.call(params, jnp.ones((2, 5, 5)), features=3, kernel_size=(3, 3))
    msg = str(e.value)
    assert "input shape (2, 5, 5)" in msg and "channels-last" in msg
    assert "(1, 2, 5, 5)" not in msg  # never the shape with the batch axis flaxen added


def test_params_holding_a_list():
    with pytest.raises(errors.LayerArgumentError, match="expected an array, got a list"):
        nn.Dense.call({"kernel": [[1.0] * 3] * 4, "bias": [0.0] * 3}, jnp.ones((2, 4)),
                      features=3)


class Drop(nn.Module):
    def apply(self, x, rate=0.5):
        return nn.dropout(x, rate)


def test_dropout_integer_input_and_rate():
    with pytest.raises(errors.LayerArgumentError, match='"Drop": dropout input dtype: '
                       "expected a floating dtype, got int32"):
        Drop.init(KEY, jnp.ones((3,), jnp.int32))
    for rate in (1.0, -0.1, np.float32(1.5), 2):
        with pytest.raises(errors.LayerArgumentError, match="dropout rate"):
            nn.dropout(jnp.ones(3), rate, rng=KEY)


# -- BatchNorm evaluation with an empty collection (#14 item 11) -------------------------


class BN(nn.Module):
    def apply(self, x, train):
        return nn.BatchNorm(x, use_running_average=not train)


def test_batchnorm_empty_collection_message():
    x = jnp.ones((2, 3))
    _, params, _ = BN.init_with_state(KEY, x, train=True)
    with pytest.raises(errors.MissingStateError) as e:
        BN.call_with_state(params, nn.Collection(), x, train=False, _mutable=False)
    msg = str(e.value)
    assert "no state collection is active" not in msg
    assert '"BatchNorm_0"' in msg and "it is empty" in msg and "init_with_state" in msg


@pytest.mark.parametrize("kw, name", [({"axis": 5}, "axis"), ({"momentum": 2.0}, "momentum"),
                                      ({"epsilon": -1.0}, "epsilon")])
def test_batchnorm_arguments(kw, name):
    with pytest.raises(errors.LayerArgumentError, match=f'"BatchNorm": {name}: expected'):
        nn.BatchNorm.init_with_state(KEY, jnp.ones((2, 4)), **kw)


@pytest.mark.parametrize("layer", [nn.LayerNorm, nn.RMSNorm])
def test_norm_epsilon(layer):
    with pytest.raises(errors.LayerArgumentError, match="epsilon: expected a number >= 0"):
        layer.init(KEY, jnp.ones((2, 4)), epsilon=-1.0)


@pytest.mark.parametrize("window, strides", [((0, 2), None), ((2, 2), (0, 1)),
                                             ((2.5, 2), None)])
def test_pooling_arguments(window, strides):
    with pytest.raises(errors.LayerArgumentError, match="window_shape|strides"):
        nn.max_pool(jnp.ones((1, 4, 4, 2)), window, strides=strides)
