"""Benchmark 3: ResNet-50 (batch 8, 224x224) train step with BatchNorm state.

Measures, for plain JAX, flaxen (the ImageNet example's model), Flax Linen, Flax NNX
(``nnx.jit``, and split/merge around ``jax.jit``), Equinox (``eqx.filter_jit``) and Haiku:
- trace and lower: ``jit(step).lower(*args)`` of a fresh function (no cache), with the
  library's own ``jit`` (``jax.jit``, ``nnx.jit``, ``eqx.filter_jit``);
- compile: ``lowered.compile()``;
- peak memory of the compiled step: ``memory_analysis()`` arguments + outputs + temporaries
  - aliased bytes (what XLA plans to hold at once; nothing is donated);
- parameter creation: flaxen ``init_by_shape`` (from shapes), and each library's init under
  ``jax.jit`` (fresh each time, so it includes compilation, as a user experiences it);
- that ``init_by_shape`` spends no FLOPs on the model: XLA's cost analysis of the compiled
  ``init_by_shape`` at batch 1 and at the benchmark batch, against plain JAX's init (which
  only draws random numbers) and the train step.
Quick mode uses a reduced ResNet (one bottleneck block per stage, batch 2, 64x64) with the
same code paths, so CI stays fast; its numbers are labelled.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import resnet_models as rm
from benchmarks import resnet_peers as rp
from benchmarks.common import Skip
from benchmarks.harness import Row, interleaved_one_shot, rows_from_times

BASELINE = "plain JAX"
SETUPS: dict[str, Callable[[jax.Array, jax.Array, tuple[int, ...]], rm.Setup]] = {
    BASELINE: rm.plain_setup,
    "flaxen": rm.flaxen_setup,
    "Flax Linen": rm.linen_setup,
    "Flax NNX (nnx.jit)": rp.nnx_jit_setup,
    "Flax NNX (split/merge)": rp.nnx_split_setup,
    "Equinox": rp.equinox_setup,
    "Haiku": rp.haiku_setup,
}
PEERS = set(SETUPS) - {BASELINE, "flaxen"}


def _xla(compiled: Any) -> Any:
    """The ``jax.stages.Compiled`` inside a library's wrapper (Equinox wraps it)."""
    return compiled if hasattr(compiled, "memory_analysis") else compiled.compiled


def _peak_bytes(compiled: Any) -> float | None:
    m = _xla(compiled).memory_analysis()
    if m is None:
        return None
    return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                 - m.alias_size_in_bytes)


def _flops(compiled: Any) -> float:
    cost = _xla(compiled).cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def _trace_lower(setup: rm.Setup) -> Any:
    step = setup.step
    fresh = functools.wraps(step)(lambda *a: step(*a))  # a new function: no tracing cache hit
    return setup.jit(fresh).lower(*setup.args)


def _init_by_shape_flops(stages: tuple[int, ...], image: int, batch: int) -> dict[int, float]:
    """XLA's FLOPs of the compiled flaxen ``init_by_shape`` at batch 1 and ``batch``."""
    from flaxen import nn

    model_def = rm.flaxen_module(stages)
    out = {}
    for b in sorted({1, batch}):
        def f(k, b=b):
            with nn.stateful():
                return model_def.init_by_shape(k, [((b, image, image, 3), jnp.float32)])[1]
        out[b] = _flops(jax.jit(f).lower(jax.random.PRNGKey(0)).compile())
    return out


def _init_by_shape_again(bench: str, model_def: Any, x: jax.Array,
                         base: list[float] | None) -> Row:
    """A second ``init_by_shape`` with the same shapes: the compiled program is reused
    (``flaxen.nn.init_cache``), so only the initializers run. Best of 3 calls."""
    from flaxen import nn

    def call(seed: int) -> None:
        with nn.stateful():
            _, p = model_def.init_by_shape(jax.random.PRNGKey(seed), [(x.shape, x.dtype)])
        jax.block_until_ready(p)

    call(0)  # the first call traces and compiles (the row above)
    times = []
    for seed in (1, 2, 3):
        start = time.perf_counter()
        call(seed)
        times.append(time.perf_counter() - start)
    return Row(bench, "flaxen init_by_shape", "second call, same shapes", "s", min(times),
               ratio=min(times) / min(base) if base else None,
               note="compiled init reused (flaxen.nn.init_cache); ratio vs plain JAX's "
                    "first jitted init")


def run(quick: bool, peers: bool = True) -> list[Row]:
    """Trace/lower, compile, init and peak-memory rows for every implementation."""
    stages, image, batch = ((1, 1, 1, 1), 64, 2) if quick else (rm.STAGES, 224, 8)
    bench = ("ResNet (quick: 1 block/stage, b2, 64px)" if quick
             else "ResNet-50 (b8, 224px)")
    reps = dict(trace=2, compile=1, init=1) if quick else dict(trace=3, compile=2, init=1)
    x = jnp.zeros((batch, image, image, 3))
    y = jnp.zeros((batch,), jnp.int32)
    setups: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, make in SETUPS.items():
        if name in PEERS and not peers:
            continue
        try:
            setups[name] = make(x, y, stages)
        except Skip as e:
            skipped[name] = f"skipped: {e}"
        except Exception as e:
            if name not in PEERS:
                raise
            skipped[name] = f"skipped: {type(e).__name__}: {e}"[:200]

    rows: list[Row] = []
    lowered: dict[str, Any] = {}

    def trace(name: str) -> None:
        jax.clear_caches()
        lowered[name] = _trace_lower(setups[name])

    def compile_(name: str) -> float:
        jax.clear_caches()
        fresh = _trace_lower(setups[name])  # a Lowered caches its compile: never reuse one
        start = time.perf_counter()
        compiled[name] = fresh.compile()
        return time.perf_counter() - start

    init_flops: dict[str, float] = {}

    def init(name: str) -> None:
        jax.clear_caches()
        fn = setups[name].init
        compiled = jax.jit(lambda k: fn(k)).lower(jax.random.PRNGKey(1)).compile()
        jax.block_until_ready(compiled(jax.random.PRNGKey(1)))
        init_flops[name] = _flops(compiled)

    compiled: dict[str, Any] = {}
    t = interleaved_one_shot({n: functools.partial(trace, n) for n in setups}, reps["trace"])
    rows += rows_from_times(bench, t, BASELINE, "trace+lower", "s")
    t = interleaved_one_shot({n: functools.partial(compile_, n) for n in setups},
                             reps["compile"])
    rows += rows_from_times(bench, t, BASELINE, "compile", "s")
    mem = {n: _peak_bytes(c) for n, c in compiled.items()}
    for n, b in mem.items():
        base = mem.get(BASELINE)
        rows.append(Row(bench, n, "peak memory (step)", "MiB",
                        None if b is None else b / 2**20,
                        ratio=b / base if b is not None and base else None))
    fns: dict[str, Callable[[], Any]] = {n: functools.partial(init, n) for n in setups}
    if "flaxen" in setups:
        from flaxen import nn

        model_def = rm.flaxen_module(stages)

        def by_shape() -> None:
            jax.clear_caches()
            with nn.stateful():
                _, p = model_def.init_by_shape(jax.random.PRNGKey(1), [(x.shape, x.dtype)])
            jax.block_until_ready(p)

        fns["flaxen init_by_shape"] = by_shape
    t = interleaved_one_shot(fns, reps["init"])
    rows += rows_from_times(bench, t, BASELINE, "init (jit, incl. compile)", "s",
                            notes={"flaxen init_by_shape": "from shapes, no FLOPs on inputs"})
    if "flaxen" in setups:
        rows.append(_init_by_shape_again(bench, model_def, x, t.get(BASELINE)))
    rows += [Row(bench, n, "trace+lower", "s", None, note=note) for n, note in skipped.items()]
    step_flops = {n: _flops(c) for n, c in compiled.items()}
    base = init_flops.get(BASELINE)
    for n, f in init_flops.items():
        rows.append(Row(bench, n, "init FLOPs (XLA)", "GFLOP", f / 1e9,
                        ratio=f / base if base else None,
                        note=f"train step: {step_flops.get(n, 0.0) / 1e9:.3g} GFLOP"))
    if "flaxen" in setups:
        by_batch = _init_by_shape_flops(stages, image, batch)
        same = max(by_batch.values()) <= 1.01 * min(by_batch.values())
        for b, f in by_batch.items():
            rows.append(Row(bench, "flaxen init_by_shape", f"FLOPs (XLA), batch {b}", "GFLOP",
                            f / 1e9, ratio=f / base if base else None,
                            note="independent of the batch" if same else
                            "DEPENDS ON THE BATCH: the forward pass is not dropped"))
    return rows
