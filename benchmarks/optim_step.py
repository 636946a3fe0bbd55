"""Jitted step time of ``optimizer.optimize`` against plain optax, on the same model.

``python -m benchmarks.optim_step [--steps N] [--repeats R]``

Both steps compute the same loss of the same ``nn.Module`` (flaxen's ``Module.call`` on a
params dict for the optax side) and the same update (Momentum 0.9 / Adam), so the compiled
computations are identical; what differs is what crosses ``jax.jit`` each call: an
``Optimizer`` pytree holding an ``nn.Model`` versus ``(params, opt_state)``. Each variant
runs ``N`` steps per repeat, interleaved, and the ratio of the medians is printed, for a
tiny model (dispatch-bound: shows per-call overhead) and a medium MLP (compute-bound).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from flaxen import nn, optim


class MLP(nn.Module):
    def apply(self, x, widths=(32,)):
        for w in widths:
            x = nn.relu(nn.Dense(x, features=w))
        return nn.Dense(x, features=10)


def _bench(widths, batch, opt_name, steps, repeats):
    module = MLP.partial(widths=widths)
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, 64))
    y = jax.random.randint(jax.random.PRNGKey(1), (batch,), 0, 10)
    _, model = module.create(jax.random.PRNGKey(2), x)
    if opt_name == "momentum":
        opt_def, tx = optim.Momentum(0.01, beta=0.9), optax.sgd(0.01, momentum=0.9)
    else:
        opt_def, tx = optim.Adam(1e-3), optax.adam(1e-3)

    def xent(logits):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    @jax.jit
    def flaxen_step(optimizer, x):
        def loss_fn(model):
            logits = model(x)
            return xent(logits), logits

        optimizer, loss, _ = optimizer.optimize(loss_fn)
        return optimizer, loss

    @jax.jit
    def optax_step(params, opt_state, x):
        loss, grads = jax.value_and_grad(lambda p: xent(module.call(p, x)))(params)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params, opt_state, loss

    optimizer = opt_def.create(model)
    params, opt_state = model.params, tx.init(model.params)

    def run_flaxen():
        nonlocal optimizer
        for _ in range(steps):
            optimizer, loss = flaxen_step(optimizer, x)
        loss.block_until_ready()

    def run_optax():
        nonlocal params, opt_state
        for _ in range(steps):
            params, opt_state, loss = optax_step(params, opt_state, x)
        loss.block_until_ready()

    wall: dict[str, list[float]] = {"flaxen": [], "optax": []}
    cpu: dict[str, list[float]] = {"flaxen": [], "optax": []}
    for fn in (run_flaxen, run_optax):  # compile and warm up
        fn()
    for _ in range(repeats):
        for name, fn in (("flaxen", run_flaxen), ("optax", run_optax)):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append((time.perf_counter() - start) / steps * 1e6)
            cpu[name].append((time.process_time() - start_cpu) / steps * 1e6)
    med = statistics.median
    return (med(wall["flaxen"]), med(wall["optax"]), med(cpu["flaxen"]), med(cpu["optax"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, optax {optax.__version__}, {jax.devices()[0].platform}, "
          f"load {os.getloadavg()[0]:.2f}")
    print("medians per step in us; wall = wall clock, cpu = this process's CPU time (less")
    print("sensitive to other load on a shared machine); ratio = flaxen / optax")
    print(f"{'model':<24}{'opt':<10}{'wall flaxen':>12}{'optax':>8}{'ratio':>7}"
          f"{'cpu flaxen':>12}{'optax':>8}{'ratio':>7}")
    for label, widths, batch in (("tiny 64-32-10 b8", (32,), 8),
                                 ("mlp 64-512-512-10 b128", (512, 512), 128)):
        for opt_name in ("momentum", "adam"):
            f, o, fc, oc = _bench(widths, batch, opt_name, args.steps, args.repeats)
            print(f"{label:<24}{opt_name:<10}{f:>12.1f}{o:>8.1f}{f / o:>7.3f}"
                  f"{fc:>12.1f}{oc:>8.1f}{fc / oc:>7.3f}")
    print(f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
