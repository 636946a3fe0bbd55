"""A run interrupted, checkpointed and resumed ends bit-for-bit where an uninterrupted run ends.

The model has BatchNorm (state in an ``nn.Collection``) and dropout (a PRNG key in the
train state), trained with Momentum under ``jax.jit``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from flaxen import nn, optim, struct
from flaxen.training import checkpoints


class Net(nn.Module):
    def apply(self, x, train=True):
        x = nn.Dense(x, features=8)
        x = nn.BatchNorm(x, use_running_average=not train)
        x = nn.dropout(x, rate=0.2, deterministic=not train)
        return nn.Dense(jax.nn.relu(x), features=3)


@struct.dataclass
class TrainState:
    optimizer: optim.Optimizer
    batch_stats: nn.Collection
    rng: jax.Array


@jax.jit
def train_step(state, x, y):
    rng, dropout_rng = jax.random.split(state.rng)

    def loss_fn(model):
        out, new_stats = model.call_with_state(state.batch_stats, x, _rng=dropout_rng,
                                               _mutable=True)
        loss = jnp.mean((out - y) ** 2)
        return loss, new_stats

    (_, new_stats), grad = jax.value_and_grad(loss_fn, has_aux=True)(state.optimizer.target)
    return TrainState(state.optimizer.apply_gradient(grad), new_stats, rng)


def _batches(n):
    keys = jax.random.split(jax.random.PRNGKey(7), n)
    return [(jax.random.normal(k, (4, 5)), jax.random.normal(jax.random.fold_in(k, 1), (4, 3)))
            for k in keys]


def _fresh(seed):
    _, params, stats = Net.init_with_state(jax.random.PRNGKey(seed), jnp.ones((4, 5)))
    opt = optim.Momentum(learning_rate=0.1, beta=0.9).create(nn.Model(Net, params))
    return TrainState(opt, stats, jax.random.key(seed + 100))


def test_resume_from_checkpoint_is_bit_exact(tmp_path):
    batches = _batches(6)
    straight = _fresh(0)
    for x, y in batches:
        straight = train_step(straight, x, y)

    state = _fresh(0)
    for step, (x, y) in enumerate(batches[:3], 1):
        state = train_step(state, x, y)
        checkpoints.save_checkpoint(tmp_path, state, step, keep=2)
    del state  # "the process dies"

    template = _fresh(1)  # another init, same shapes
    resumed = checkpoints.restore_checkpoint(tmp_path, template)
    assert int(resumed.optimizer.state.step) == 3
    # Restored arrays are placed like the template's (here uncommitted, on the default
    # device), so the jitted step compiled above is reused rather than compiled again.
    for t, r in zip(jax.tree.leaves(template), jax.tree.leaves(resumed)):
        assert r.committed == t.committed and r.sharding == t.sharding
    for x, y in batches[3:]:
        resumed = train_step(resumed, x, y)

    assert jax.tree.structure(resumed) == jax.tree.structure(straight)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
