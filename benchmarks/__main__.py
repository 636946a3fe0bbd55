"""``python -m benchmarks [--quick] [--only NAME ...] [--no-peers] [--out DIR]``.

Runs every benchmark (tiny MLP step, MNIST CNN step, ResNet trace/compile/init/memory,
Transformer LM step), each against plain JAX measured side by side in the same process,
and writes ``<out>/<stem>.json`` and ``<out>/<stem>.md`` (stem ``quick`` or ``full``).
Exits 1 if any benchmark crashed (after running the others); timing never fails it.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import sys
import time
import traceback

from benchmarks import harness

# The registry: benchmark name -> module ``benchmarks.<name>``, which defines
# ``run(quick: bool, peers: bool = True) -> list[harness.Row]``. Every row any of them
# returns lands in the one table (see benchmarks/README.md, "Adding rows"). Modules are
# imported when their benchmark runs, so one that fails to import only fails its own line.
BENCHES = ("mlp", "mnist_cnn", "resnet", "lm")


def _run_bench(name: str, quick: bool, peers: bool) -> list[harness.Row]:
    module = importlib.import_module(f"benchmarks.{name}")
    return list(module.run(quick, peers=peers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="few repeats and a reduced ResNet: a few minutes on 2 cores")
    parser.add_argument("--only", nargs="+", choices=list(BENCHES), default=list(BENCHES),
                        help="run only these benchmarks")
    parser.add_argument("--no-peers", action="store_true",
                        help="skip Flax Linen/NNX, Equinox and Haiku even if installed")
    parser.add_argument("--out", default="benchmarks/results",
                        help="directory for the JSON and Markdown results")
    args = parser.parse_args(argv)

    meta = {"command": "python -m benchmarks " + " ".join(argv if argv is not None
                                                          else sys.argv[1:]),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "quick": args.quick, "machine": harness.machine(), "load_before": harness.load()}
    rows: list[harness.Row] = []
    failed: list[str] = []
    for name in args.only:
        start = time.perf_counter()
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            rows += _run_bench(name, args.quick, not args.no_peers)
        except Exception:  # report and go on; the exit status says it failed
            traceback.print_exc()
            failed.append(name)
            rows.append(harness.Row(name, "-", "-", "", None, note="CRASHED, see log"))
        print(f"   {time.perf_counter() - start:.0f} s, load {harness.load()[0]:.2f}",
              file=sys.stderr, flush=True)
        # Written after every benchmark, so an interrupted run keeps what it measured.
        meta["load_after"] = harness.load()
        meta["failed"] = failed
        paths = harness.write(rows, meta, args.out, "quick" if args.quick else "full")
    print(harness.markdown(rows, meta))
    print("wrote " + " and ".join(paths), file=sys.stderr)
    if failed:
        print("FAILED: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
