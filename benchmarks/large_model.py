"""Large-model measures on 8 simulated CPU devices: sharded bytes, losses, collectives, scan
compile times and remat memory. The figures in examples/lm1b/README.md come from here.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.large_model

Prints one JSON object (and each part on stderr as it completes). Timings are trace + lower
(``jax.jit(step).lower``) and compile (``.compile()``) of one training step (forward,
backward, Adam), best of ``--repeats``, with JAX's caches cleared before each.
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from examples.lm1b import models  # noqa: E402
from flaxen import nn, optim, parallel, sharding  # noqa: E402


def lm_config(num_layers: int, scan: bool, remat: bool = False, emb: int = 64,
              length: int = 16) -> models.LMConfig:
    return models.LMConfig(vocab_size=64, emb_dim=emb, num_heads=8, num_layers=num_layers,
                           mlp_dim=2 * emb, max_len=length, scan_layers=scan, remat=remat)


def create(config: models.LMConfig, lr: float = 3e-3) -> optim.Optimizer:
    module = models.TransformerLM.partial(config=config)
    _, params = module.init_by_shape(jax.random.PRNGKey(0), [((1, config.max_len), jnp.int32)])
    return optim.Adam(lr).create(nn.Model(module, params))


def train_step(optimizer: optim.Optimizer, batch: jax.Array) -> tuple[Any, ...]:
    def loss_fn(model: nn.Model) -> jax.Array:
        logp = jax.nn.log_softmax(model(batch[:, :-1]))
        return -jnp.mean(jnp.take_along_axis(logp, batch[:, 1:, None], -1))

    return optimizer.optimize(loss_fn)


def batches(n: int, batch_size: int = 16, length: int = 16) -> list[np.ndarray]:
    rs = np.random.RandomState(0)
    out = []
    for _ in range(n):
        start, stride = rs.randint(0, 64, (batch_size, 1)), rs.randint(1, 4, (batch_size, 1))
        out.append(((start + stride * np.arange(length + 1)) % 64).astype(np.int32))
    return out


def compile_times(num_layers: int, scan: bool, repeats: int) -> dict[str, float]:
    """Seconds to trace+lower and to compile one training step (best of ``repeats``)."""
    config = lm_config(num_layers, scan)
    opt = jax.eval_shape(lambda: create(config))
    batch = jax.ShapeDtypeStruct((16, 17), jnp.int32)
    best = {"trace_lower_s": np.inf, "compile_s": np.inf}
    for _ in range(repeats):
        jax.clear_caches()
        t0 = time.perf_counter()
        lowered = jax.jit(train_step).lower(opt, batch)
        t1 = time.perf_counter()
        lowered.compile()
        t2 = time.perf_counter()
        best["trace_lower_s"] = min(best["trace_lower_s"], t1 - t0)
        best["compile_s"] = min(best["compile_s"], t2 - t1)
    best["total_s"] = best["trace_lower_s"] + best["compile_s"]
    return {k: round(v, 3) for k, v in best.items()}


def remat_temp_bytes(num_layers: int = 24) -> dict[str, int]:
    """``memory_analysis().temp_size_in_bytes`` of the step, scanned, without and with remat
    (batch 16 x 128 tokens, width 128: activations dominate)."""
    out = {}
    batch = jax.ShapeDtypeStruct((16, 129), jnp.int32)
    for remat in (False, True):
        config = lm_config(num_layers, True, remat, emb=128, length=128)
        opt = jax.eval_shape(lambda config=config: create(config))
        compiled = jax.jit(train_step).lower(opt, batch).compile()
        analysis = compiled.memory_analysis()
        assert analysis is not None, "this backend reports no memory analysis"
        out["remat" if remat else "no_remat"] = int(analysis.temp_size_in_bytes)
    return out


def collectives(step: Any, optimizer: Any, batch: Any) -> dict[str, int]:
    text = step.lower(optimizer, batch).compile().as_text()
    ops = r"all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute"
    return dict(collections.Counter(
        m.group(1) for m in re.finditer(rf"\s({ops})(?:-start)?\(", text)))


def sharded_runs(steps: int = 50) -> dict[str, Any]:
    """Losses of fully sharded and tensor-parallel runs against the replicated one."""
    start = create(lm_config(2, False))
    data = batches(steps)

    def run(opt: Any, mesh: Any) -> tuple[np.ndarray, Any, Any]:
        step = jax.jit(train_step)
        losses = []
        for b in data:
            opt, loss = step(opt, parallel.shard_batch(b, mesh))
            losses.append(float(loss))
        return np.array(losses), step, opt

    mesh = parallel.default_mesh()
    want, step, _ = run(start.replicate(mesh), mesh)
    out: dict[str, Any] = {"replicated": {
        "first_loss": float(want[0]), "last_loss": float(want[-1]),
        "collectives": collectives(step, start.replicate(mesh),
                                   parallel.shard_batch(data[0], mesh))}}
    total = sharding.total_bytes(start)
    for name, mesh, rules in (("fully_sharded 8x1", sharding.make_mesh(8),
                               sharding.fully_sharded()),
                              ("tensor_parallel 1x8", sharding.make_mesh(1, 8),
                               sharding.tensor_parallel()),
                              ("tensor_parallel 2x4", sharding.make_mesh(2, 4),
                               sharding.tensor_parallel())):
        placed = start.shard(mesh, rules)
        got, step, _ = run(placed, mesh)
        per_device = sharding.bytes_per_device(placed)
        out[name] = {
            "max_abs_loss_diff": float(np.max(np.abs(got - want))),
            "param_and_adam_bytes_total": total,
            "max_bytes_per_device": max(per_device.values()),
            "per_device_over_total": round(max(per_device.values()) / total, 4),
            "collectives": collectives(step, placed, parallel.shard_batch(data[0], mesh)),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=["compile", "remat", "sharded"], default=None)
    args = parser.parse_args()
    result: dict[str, Any] = {"devices": jax.device_count(), "jax": jax.__version__}
    if args.only in (None, "sharded"):
        result["sharded"] = sharded_runs()
        print(json.dumps({"sharded": result["sharded"]}), file=sys.stderr, flush=True)
    if args.only in (None, "remat"):
        result["remat_temp_bytes_24_layers"] = remat_temp_bytes()
        print(json.dumps({"remat": result["remat_temp_bytes_24_layers"]}), file=sys.stderr,
              flush=True)
    if args.only in (None, "compile"):
        times = {}
        for scan in (True, False):
            for n in (2, 24):
                key = f"{n} layers {'scanned' if scan else 'unscanned'}"
                times[key] = compile_times(n, scan, args.repeats)
                print(json.dumps({key: times[key]}), file=sys.stderr, flush=True)
        result["compile"] = times
        for kind in ("scanned", "unscanned"):
            result[f"ratio_24_over_2_{kind}"] = round(
                times[f"24 layers {kind}"]["total_s"] / times[f"2 layers {kind}"]["total_s"], 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
