"""A small decoder-only LM (the lm1b example's model) and one training step, for the
sharding and scan tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from examples.lm1b import models
from flaxen import nn, optim, parallel


def config(num_layers: int = 2, scan: bool = False, remat: bool = False) -> models.LMConfig:
    return models.LMConfig(vocab_size=64, emb_dim=64, num_heads=8, num_layers=num_layers,
                           mlp_dim=128, max_len=16, scan_layers=scan, remat=remat)


def tiny_lm_params(num_layers: int = 2, scan: bool = False) -> dict:
    module = models.TransformerLM.partial(config=config(num_layers, scan))
    _, params = module.init_by_shape(jax.random.PRNGKey(0), [((1, 16), jnp.int32)])
    return params


def create_optimizer(num_layers: int = 2, scan: bool = False,
                     learning_rate: float = 3e-3) -> optim.Optimizer:
    module = models.TransformerLM.partial(config=config(num_layers, scan))
    params = tiny_lm_params(num_layers, scan)
    return optim.Adam(learning_rate).create(nn.Model(module, params))


def train_step(optimizer: optim.Optimizer, batch: jax.Array):
    """One Adam step of next-token cross-entropy on ``batch`` (int32 ``[b, 17]``)."""

    def loss_fn(model):
        logp = jax.nn.log_softmax(model(batch[:, :-1]))
        return -jnp.mean(jnp.take_along_axis(logp, batch[:, 1:, None], -1))

    return optimizer.optimize(loss_fn)


def batches(n: int, batch_size: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Learnable sequences (arithmetic progressions mod 64), so training is well
    conditioned and runs on different layouts stay close."""
    rs = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        start = rs.randint(0, 64, (batch_size, 1))
        stride = rs.randint(1, 4, (batch_size, 1))
        out.append(((start + stride * np.arange(17)) % 64).astype(np.int32))
    return out


def losses(optimizer: optim.Optimizer, mesh, data: list[np.ndarray]):
    """``(final optimizer, losses per step, the jitted step)``."""
    step = jax.jit(train_step)
    out = []
    for b in data:
        optimizer, loss = step(optimizer, parallel.shard_batch(b, mesh))
        out.append(float(loss))
    return optimizer, np.array(out), step
