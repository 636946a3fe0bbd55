"""Cost of the opt-in ``optim.check_finite`` in a jitted training step.

``python -m benchmarks.finite_check [--repeats R]``

The same jitted Momentum step on an MLP, with and without
``grads = optim.check_finite(grads, loss)``, interleaved round by round; prints the
median time per step of each and the median paired ratio, for a tiny model
(dispatch-bound: the host callback dominates) and a wider one (compute-bound).
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp

from benchmarks import harness
from flaxen import nn, optim


class MLP(nn.Module):
    def apply(self, x, widths=(32,)):
        for w in widths:
            x = nn.relu(nn.Dense(x, features=w))
        return nn.Dense(x, features=10)


def _steps(widths: tuple[int, ...], batch: int) -> dict[str, harness.RunFn]:
    module = MLP.partial(widths=widths)
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, 64))
    _, params = module.init(jax.random.PRNGKey(1), x)
    opt0 = optim.Momentum(0.01, beta=0.9).create(nn.Model(module, params))

    def make(check: bool):
        @jax.jit
        def step(opt, x):
            loss, grads = jax.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(opt.target)
            if check:
                grads = optim.check_finite(grads, loss)
            return opt.apply_gradient(grads), loss

        def run(n: int) -> None:
            opt = opt0
            for _ in range(n):
                opt, loss = step(opt, x)
            jax.block_until_ready(loss)

        return run

    return {"no check": make(False), "check_finite": make(True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    for label, widths, batch in [("tiny MLP 64-32-10, batch 8", (32,), 8),
                                 ("MLP 64-1024x3-10, batch 256", (1024,) * 3, 256)]:
        times = harness.interleaved(_steps(widths, batch), args.repeats, target_s=0.5)
        ratio = harness.paired_ratios(times, "no check")["check_finite"]
        med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
        print(f"{label}: no check {med['no check']:.0f} us/step, check_finite "
              f"{med['check_finite']:.0f} us/step, ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
