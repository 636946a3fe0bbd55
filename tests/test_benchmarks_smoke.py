"""Smoke tests of ``benchmarks/``: the statistics, the report files, one quick run, and
that the plain-JAX baselines compute the same function as the flaxen models they time."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import __main__ as bench_main
from benchmarks import harness, mlp, mnist_cnn


def test_spread_and_paired_ratios_match_numpy():
    xs = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    q75, q25 = np.percentile(xs, [75, 25])
    assert harness.spread(xs) == pytest.approx((q75 - q25) / np.median(xs))
    assert harness.spread([2.0]) == 0.0
    times = {"base": [1.0, 2.0, 4.0], "other": [1.5, 2.0, 6.0]}
    ratios = harness.paired_ratios(times, "base")
    assert ratios["base"] == 1.0
    assert ratios["other"] == pytest.approx(np.median([1.5, 1.0, 1.5]))


def test_interleaved_runs_every_impl_every_round():
    calls: list[tuple[str, int]] = []
    impls = {name: (lambda n, name=name: calls.append((name, n))) for name in "abc"}
    times = harness.interleaved(impls, repeats=3, target_s=1e-4, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    rounds = [name for name, _ in calls[-9:]]
    assert rounds == list("abc" + "bca" + "cab")  # rotated order, every round
    assert all(t > 0 for ts in times.values() for t in ts)


def test_rows_and_report_files(tmp_path):
    times = {"plain JAX": [1e-3, 2e-3], "x": [2e-3, 4e-3]}
    rows = harness.rows_from_times("b", times, "plain JAX", unit="ms", throughput_items=10)
    by = {(r.impl, r.metric): r for r in rows}
    assert by[("x", "step time")].median == pytest.approx(3.0)
    assert by[("x", "step time")].ratio == pytest.approx(2.0)
    assert by[("x", "throughput")].best == pytest.approx(10 / 2e-3)
    meta = {"command": "c", "date": "d", "machine": harness.machine(),
            "load_before": (0.0, 0.0, 0.0), "load_after": (0.0, 0.0, 0.0)}
    json_path, md_path = harness.write(rows, meta, str(tmp_path), "t")
    with open(json_path) as f:
        data = json.load(f)
    assert len(data["rows"]) == len(rows) and data["meta"]["command"] == "c"
    with open(md_path) as f:
        table = f.read()
    # One detail line per row, and one summary line per metric with x's ratio in bold.
    assert table.count("\n| b | plain JAX | ") + table.count("\n| b | x | ") == len(rows)
    assert "\n| b | step time | 1.5 ms | **2.00** |" in table


def test_quick_mlp_run_writes_results(tmp_path):
    rc = bench_main.main(["--quick", "--only", "mlp", "--no-peers", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "quick.json").read_text())
    impls = {r["impl"] for r in data["rows"] if r["median"] is not None}
    assert {"plain JAX", "flaxen (params dict)"} <= impls
    assert data["meta"]["failed"] == []


@pytest.mark.parametrize("bench", [mlp, mnist_cnn], ids=["mlp", "mnist_cnn"])
def test_plain_baseline_is_the_same_function_as_flaxen(bench):
    """The hand-written model uses flaxen's parameter layout, so the same params must give
    the same logits: the benchmark compares equal work."""
    key = jax.random.PRNGKey(0)
    shape = (2, mlp.IN_FEATURES) if bench is mlp else (2, *mnist_cnn.SHAPE)
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    module = bench.flaxen_model()
    out, params = jax.jit(module.init)(key, x)
    want = jax.jit(bench.plain_apply)(params, x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-5)
    plain = jax.eval_shape(bench.plain_init, key)
    assert jax.tree.map(jnp.shape, plain) == jax.tree.map(jnp.shape, params)
