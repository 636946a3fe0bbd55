"""Whole-model design tests: the seed's CNN, a shared-module autoencoder, and the seed
snippets run with only the import changed."""

import jax
import jax.numpy as jnp
import numpy as np

import flaxen
from examples.mnist.train import CNN  # the seed README's model, as the example ships it
from flaxen import nn


def test_seed_cnn_parameter_layout_and_training_step(rng):
    _, model = CNN.create_by_shape(rng, [((1, 28, 28, 1), jnp.float32)])
    assert jax.tree.map(jnp.shape, model.params) == {
        "Conv_0": {"kernel": (3, 3, 1, 32), "bias": (32,)},
        "Conv_1": {"kernel": (3, 3, 32, 64), "bias": (64,)},
        "Dense_2": {"kernel": (3136, 256), "bias": (256,)},
        "Dense_3": {"kernel": (256, 10), "bias": (10,)},
    }
    images = jax.random.uniform(rng, (16, 28, 28, 1))
    labels = jnp.arange(16) % 10

    @jax.jit
    def sgd_step(model):
        def loss(m):
            return -jnp.mean(jnp.take_along_axis(m(images), labels[:, None], axis=1))

        value, grads = jax.value_and_grad(loss)(model)
        return jax.tree.map(lambda p, g: p - 0.1 * g, model, grads), value

    losses = []
    for _ in range(5):
        model, value = sgd_step(model)
        losses.append(float(value))
    assert losses[-1] < losses[0]
    # 320 + 18,496 + 803,072 + 2,570 parameters, 4 bytes each.
    assert nn.summary(model).splitlines()[-1].split()[1:] == ["824,458", "3,297,832"]


class Encoder(nn.Module):
    def apply(self, x, shared_layer):
        return nn.relu(shared_layer(x))


class Decoder(nn.Module):
    def apply(self, z, shared_layer, features):
        return nn.Dense(shared_layer(z), features=features)


class AutoEncoder(nn.Module):
    """Encoder and decoder share one Dense: its params appear once, at the top level."""

    def apply(self, x, latent=4):
        bottleneck = nn.Dense.shared(features=latent, name="bottleneck")
        z = Encoder(x, bottleneck, name="encoder")
        return self.decode(z, bottleneck, x.shape[-1])

    @nn.module_method
    def decode(self, z, shared_layer=None, features=8, **unused):
        return Decoder(z, shared_layer, features, name="decoder")


def test_autoencoder_with_a_shared_module(rng):
    x = jax.random.normal(rng, (5, 4))
    # latent == input size so the bottleneck can run on both x and z.
    y, params = AutoEncoder.init(rng, x)
    assert set(params) == {"bottleneck", "encoder", "decoder"}
    assert params["encoder"] == {} and set(params["decoder"]) == {"Dense_0"}
    b = params["bottleneck"]
    d = params["decoder"]["Dense_0"]
    z = np.maximum(np.asarray(x) @ b["kernel"] + b["bias"][None], 0)
    expected = (z @ b["kernel"] + b["bias"][None]) @ d["kernel"] + d["bias"][None]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(AutoEncoder.call(p, x) ** 2))(params)
    # The shared kernel gets gradient from both uses.
    assert np.all(np.isfinite(grads["bottleneck"]["kernel"]))


def test_seed_snippets_run_with_only_the_import_changed(rng):
    # from flax import nn  ->  from flaxen import nn  (and flax.nn -> flaxen.nn)
    class Linear(nn.Module):
        def apply(self, x, num_features, kernel_init_fn):
            input_features = x.shape[-1]
            W = self.param("W", (input_features, num_features), kernel_init_fn)
            return jnp.dot(x, W)

    @nn.module
    def DenseLayer(x, features):
        x = flaxen.nn.Dense(x, features)
        x = flaxen.nn.relu(x)
        return x

    x = jnp.ones((2, 3))
    y, params = Linear.init(rng, x, num_features=4, kernel_init_fn=nn.initializers.ones)
    np.testing.assert_allclose(y, 3 * jnp.ones((2, 4)))
    y, params = DenseLayer.init(rng, x, features=5)
    assert y.shape == (2, 5) and set(params) == {"Dense_0"}
