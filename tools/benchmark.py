#!/usr/bin/env python
"""Speed and memory benchmark: ``python tools/benchmark.py [--json OUT] [--quick] [--threads N] [--device D]``.

Every figure is a time (or memory) measured in this run next to the figure it is compared with, and is
reported as a ratio as well, so results from a loaded or a different machine stay interpretable.

Sections of the result JSON (``format: lyadeq-zoo-bench/1``); each module's docstring says what it measures
and how:

* ``gemm``: the machine's measured float32 matmul throughput, the yardstick of the FLOP floor
  (``benchmarks/throughput.py``).
* ``solvers``: our ``anderson`` / ``broyden`` / ``naive`` against torchdeq's solvers on the same ``f``, the
  zoo's MNIST and CIFAR-10 DEQ cells (``benchmarks/solvers.py``).
* ``model``: train-step and eval throughput of ``deq_<ds>``, ``lyadeq_<ds>`` and a plain baseline, FLOPs per
  image and time over the floor (``benchmarks/throughput.py``).
* ``memory``: peak memory of a forward + backward pass with ``ift`` vs ``unroll`` backward as the forward
  solver is forced to run 10 / 30 / 100 iterations (``benchmarks/memory.py``).
* ``attacks``: images/s of PGD-10 and of a whole attack suite (``benchmarks/attacks.py``).
* ``targets``: the project's performance targets, each with the numbers it was judged on
  (``benchmarks/targets.py``).

CPU runs pin the number of torch threads (``--threads``, default 1) and record it. ``--device cuda``
synchronises before every clock read. Output: ``benchmarks/results-<machine>.json`` (machine = ``cpu-<N>core``
or the GPU name) and a PNG beside it; without ``--json`` (and not ``--quick``) ``benchmarks/README.md`` is
regenerated from every full result in ``benchmarks/``. ``--quick`` is a tiny smoke run (under a minute).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import torch

# The benchmarks ship beside the library in the checkout, not inside the installed distribution.
BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmarks() -> ModuleType:
    """The checkout's ``benchmarks`` package, found at :data:`BENCH_DIR` (reused when already imported)."""
    loaded = sys.modules.get("benchmarks")
    if loaded is not None and getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve().parent == BENCH_DIR:
        return loaded
    spec = importlib.util.spec_from_file_location(
        "benchmarks", BENCH_DIR / "__init__.py", submodule_search_locations=[str(BENCH_DIR)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["benchmarks"] = package
    spec.loader.exec_module(package)
    return package


load_benchmarks()
common = importlib.import_module("benchmarks.common")
memory = importlib.import_module("benchmarks.memory")
report = importlib.import_module("benchmarks.report")
run = importlib.import_module("benchmarks.run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="result path (default: benchmarks/results-<machine>[-quick].json); a PNG goes beside it",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every section (< 1 min)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--sections",
        default="solvers,model,memory,attacks",
        help="comma-separated subset of solvers,model,memory,attacks (default: all)",
    )
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was given but torch sees no CUDA device; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu or cuda, got {args.device!r}")
    if args.memory_child is not None:  # one memory measurement in this process (what `-m benchmarks.memory` does)
        print(json.dumps(memory.memory_pass(json.loads(args.memory_child), device)))
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(common.SECTIONS)
    if unknown:
        raise SystemExit(f"unknown --sections {sorted(unknown)}; choose from solvers, model, memory, attacks")
    command = "python tools/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = run.run_benchmark(device, args.quick, args.threads, sections, command)
    path = args.json or common.BENCH_DIR / f"results-{result['machine']}{'-quick' if args.quick else ''}.json"
    print(f"[benchmark] wrote {report.write_result(result, path)}", file=sys.stderr)
    if set(sections) == set(common.SECTIONS):
        print(f"[benchmark] wrote {report.plot(result, path.with_suffix('.png'))}", file=sys.stderr)
        print(report.markdown(result))
        if args.json is None and not args.quick:
            print(f"[benchmark] wrote {report.write_readme(common.BENCH_DIR)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
