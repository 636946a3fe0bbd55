"""Timing harness: interleaved repeats, medians, spreads, paired ratios, and reports.

Every benchmark hands the harness a few *implementations* of the same workload (plain JAX,
flaxen, the peers). Each implementation is a ``run(n)`` closure that performs ``n`` steps
and blocks until the device is done. The harness warms every closure up, then runs the
repeats *interleaved*: in each round every implementation runs once, in a rotated order, so
a burst of load from other processes hits all of them alike. The ratio against the
baseline is the median of the per-round ratios (paired), which is far less noisy on a
shared machine than the ratio of two medians.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

RunFn = Callable[[int], None]


@dataclasses.dataclass
class Row:
    """One line of the results table.

    Attributes:
      bench: the benchmark's name (``mlp``, ``mnist_cnn``, ...).
      impl: the implementation (``plain JAX``, ``flaxen``, ``Flax Linen``, ...).
      metric: what was measured (``step time``, ``compile time``, ``peak memory``, ...).
      unit: the unit of ``median`` (``us``, ``s``, ``MiB``, ``images/s``, ...).
      median: the median over repeats.
      spread: relative spread, (p75 - p25) / median, over repeats (0 for one-shot values).
      ratio: this implementation against the baseline (``plain JAX``) for the same metric;
        for times and memory lower is better, for throughputs it is baseline / this, so a
        ratio above 1 always means "slower or bigger than plain JAX".
      repeats: how many repeats the median is over.
      best: the best repeat (minimum time, maximum throughput). Load from other processes
        only ever slows a repeat down, so on a busy machine this is the steadier estimate.
      best_ratio: ``best`` against the baseline's ``best`` (same orientation as ``ratio``).
      note: anything a reader must know (skipped, why; what a variant isolates).
    """

    bench: str
    impl: str
    metric: str
    unit: str
    median: float | None
    spread: float = 0.0
    ratio: float | None = None
    repeats: int = 1
    note: str = ""
    best: float | None = None
    best_ratio: float | None = None


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def spread(xs: list[float]) -> float:
    """The interquartile range relative to the median (0.0 for fewer than 2 samples)."""
    if len(xs) < 2:
        return 0.0
    med = statistics.median(xs)
    return (_quantile(xs, 0.75) - _quantile(xs, 0.25)) / med if med else 0.0


def _timed(run: RunFn, n: int) -> float:
    start = time.perf_counter()
    run(n)
    return time.perf_counter() - start


def calibrate(run: RunFn, target_s: float, max_steps: int = 100_000) -> int:
    """Steps per repeat so that one repeat of ``run`` lasts about ``target_s`` seconds."""
    n = 1
    while True:
        t = _timed(run, n)
        if t >= target_s / 4 or n >= max_steps:
            return max(1, min(max_steps, round(n * target_s / max(t, 1e-9))))
        n *= 4


def interleaved(impls: dict[str, RunFn], repeats: int, target_s: float,
                warmup: int = 2, baseline: str | None = None,
                cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Seconds per step of each implementation, one list entry per round.

    Args:
      impls: name -> ``run(n)``; each must block until its ``n`` steps are done.
      repeats: the number of rounds.
      target_s: about how long one implementation's repeat lasts (sets steps per repeat,
        the same for all implementations, calibrated on ``baseline``).
      warmup: untimed calls of ``run(1)`` per implementation (the first one compiles).
      baseline: the implementation used to calibrate; the first one if None.
      cpu: if given, filled with the process CPU seconds per step (all threads), round by
        round. CPU time does not count the time spent waiting for a core, so on a machine
        shared with other work it is much steadier than wall time.

    Returns:
      name -> list of ``repeats`` per-step wall-clock times in seconds, round by round.
    """
    names = list(impls)
    for name in names:
        for _ in range(warmup):
            impls[name](1)
    base = baseline if baseline is not None else names[0]
    steps = calibrate(impls[base], target_s)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            c0 = time.process_time()
            times[name].append(_timed(impls[name], steps) / steps)
            if cpu is not None:
                cpu.setdefault(name, []).append((time.process_time() - c0) / steps)
    return times


def paired_ratios(times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Median over rounds of ``times[name][r] / times[baseline][r]``."""
    base = times[baseline]
    return {name: statistics.median(t / b for t, b in zip(ts, base))
            for name, ts in times.items()}


def rows_from_times(bench: str, times: dict[str, list[float]], baseline: str,
                    metric: str = "step time", unit: str = "us",
                    notes: dict[str, str] | None = None,
                    throughput_items: int | None = None,
                    throughput_unit: str = "items/s") -> list[Row]:
    """Table rows for interleaved step times (and, if asked, the throughput they imply)."""
    notes = notes or {}
    ratios = paired_ratios(times, baseline) if baseline in times else {}
    scale = {"us": 1e6, "ms": 1e3, "s": 1.0}[unit]
    rows = []
    base_best = min(times[baseline]) if baseline in times else None
    for name, ts in times.items():
        best_ratio = min(ts) / base_best if base_best else None
        rows.append(Row(bench, name, metric, unit, statistics.median(ts) * scale, spread(ts),
                        ratios.get(name), len(ts), notes.get(name, ""), min(ts) * scale,
                        best_ratio))
        if throughput_items is not None:
            tp = [throughput_items / t for t in ts]
            rows.append(Row(bench, name, "throughput", throughput_unit, statistics.median(tp),
                            spread(tp), ratios.get(name), len(ts), "", max(tp), best_ratio))
    return rows


def one_shot(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds taken by each of ``repeats`` fresh calls of ``fn`` (no warm-up: each call
    must redo its work, e.g. trace or compile from scratch)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def interleaved_one_shot(fns: dict[str, Callable[[], Any]],
                         repeats: int) -> dict[str, list[float]]:
    """Seconds of fresh calls of each ``fns[name]``, interleaved round by round (rotated
    order), for work that cannot be warmed up: tracing, compiling, initialising."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            own = fns[name]()
            # A function that returns a float timed its own critical part (e.g. only the
            # compile, after an untimed fresh trace); otherwise the whole call counts.
            times[name].append(own if isinstance(own, float) else time.perf_counter() - start)
    return times


def load() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (zeros where the OS has none)."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def machine() -> dict[str, Any]:
    """What the numbers came from: CPU, cores, Python, JAX, and the peers' versions."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {"jax": jax.__version__}
    for mod in ("jaxlib", "optax", "flax", "equinox", "haiku"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # a missing or broken peer is just not listed
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "backend": jax.default_backend(),
            "devices": len(jax.devices()), "versions": versions}


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


BASELINE = "plain JAX"
# Derived from the step time (items / time): the summary shows the step time only.
_SUMMARY_SKIP = {"throughput"}


def summary(rows: list[Row]) -> str:
    """The one comparison table: a line per (benchmark, metric), plain JAX's value, and each
    implementation's ratio to it (> 1: slower or bigger); the lowest non-baseline ratio of
    a line is bold. Skipped implementations show as ``-``."""
    impls: list[str] = []
    lines: dict[tuple[str, str], dict[str, Row]] = {}
    for r in rows:
        if r.metric in _SUMMARY_SKIP or r.metric == "-":
            continue
        if r.impl not in impls:
            impls.append(r.impl)
        lines.setdefault((r.bench, r.metric), {})[r.impl] = r
    others = [i for i in impls if i != BASELINE]
    out = ["| benchmark | metric | plain JAX | " + " | ".join(others) + " |",
           "|---|---|---:|" + "---:|" * len(others)]
    for (bench, metric), by in lines.items():
        base = by.get(BASELINE)
        base_txt = (f"{_fmt(base.median)} {base.unit}"
                    if base is not None and base.median is not None else "-")
        ratios = {i: by[i].ratio for i in others if i in by and by[i].ratio is not None}
        best = min(ratios.values()) if ratios else None
        cells = []
        for i in others:
            ratio = ratios.get(i)
            cell = "-" if ratio is None else f"{ratio:.2f}"
            cells.append(f"**{cell}**" if ratio is not None and ratio == best else cell)
        out.append(f"| {bench} | {metric} | {base_txt} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    """The results as Markdown: a header with machine, load and command, then one table."""
    m = meta["machine"]
    lines = [
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['backend']} backend, "
        f"Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + "  ",
        "Load average (1/5/15 min) before: " + " / ".join(f"{x:.2f}" for x in meta["load_before"])
        + ", after: " + " / ".join(f"{x:.2f}" for x in meta["load_after"]),
        "",
        "Ratio = this / plain JAX, paired round by round, median over rounds (> 1: slower "
        "or bigger; for throughput it is plain / this); bold: the lowest of the line. On a "
        "shared machine read the CPU-time lines (they do not count waiting for a core).",
        "",
        summary(rows),
        "Details: best = the best round; best ratio = best / plain JAX's best. Spread = "
        "interquartile range / median. n = rounds.",
        "",
        "| benchmark | implementation | metric | median | best | unit | spread | ratio vs "
        "plain JAX | best ratio | n | note |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.3f}"
        best_ratio = "" if r.best_ratio is None else f"{r.best_ratio:.3f}"
        best = "" if r.best is None else _fmt(r.best)
        lines.append(f"| {r.bench} | {r.impl} | {r.metric} | {_fmt(r.median)} | {best} | "
                     f"{r.unit} | {r.spread:.1%} | {ratio} | {best_ratio} | {r.repeats} | "
                     f"{r.note} |")
    return "\n".join(lines) + "\n"


def write(rows: list[Row], meta: dict[str, Any], out_dir: str, stem: str) -> tuple[str, str]:
    """Writes ``<stem>.json`` and ``<stem>.md`` to ``out_dir``; returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, stem + ".json")
    md_path = os.path.join(out_dir, stem + ".md")
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=1)
    with open(md_path, "w") as f:
        f.write(markdown(rows, meta))
    return json_path, md_path
