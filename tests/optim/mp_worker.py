"""One process of the 2-process data-parallel test (run by test_multiprocess.py).

Usage: ``python mp_worker.py PROCESS_ID PORT``. Each process has 2 CPU devices; the mesh
spans all 4. Each process feeds its half of every global batch to ``shard_batch``; after
training, the unreplicated parameters must equal a single-device run on the whole batches.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


def main(pid: int, port: str) -> None:
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    import jax.numpy as jnp
    import numpy as np

    from flaxen import nn, optim, parallel

    class MLP(nn.Module):
        def apply(self, x):
            return nn.Dense(jnp.tanh(nn.Dense(x, features=8)), features=1)

    @jax.jit
    def train_step(optimizer, x, y):
        loss_fn = lambda model: (jnp.mean(jnp.square(model(x) - y)), None)
        return optimizer.optimize(loss_fn)[0]

    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(8, 3)).astype(np.float32),
                rng.normal(size=(8, 1)).astype(np.float32)) for _ in range(5)]
    _, model = MLP.create(jax.random.PRNGKey(0), jnp.ones((1, 3)))
    opt_def = optim.Adam(0.05)

    single = opt_def.create(model)
    for x, y in batches:
        single = train_step(single, x, y)

    mesh = parallel.default_mesh()
    assert mesh.shape == {"batch": 4}, mesh.shape
    multi = opt_def.create(model).replicate(mesh)
    for x, y in batches:
        local = (x[pid * 4:(pid + 1) * 4], y[pid * 4:(pid + 1) * 4])
        xs, ys = parallel.shard_batch(local, mesh)
        assert xs.shape == (8, 3), xs.shape
        multi = train_step(multi, xs, ys)
    back = multi.unreplicate()
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(single)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    print(f"process {pid}: OK")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
