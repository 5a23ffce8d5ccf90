"""Speed and memory benchmark: ``lyadeq-benchmark [--json OUT] [--quick] [--threads N] [--device D]``.

Every figure is a time (or memory) measured in this run next to the figure it is compared with, and is
reported as a ratio as well, so results from a loaded or a different machine stay interpretable.

Sections of the result JSON (``format: lyadeq-zoo-bench/1``); each module's docstring says what it measures
and how:

* ``gemm``: the machine's measured float32 matmul throughput, the yardstick of the FLOP floor
  (:mod:`lyadeq_zoo.benchmarks.throughput`).
* ``solvers``: our ``anderson`` / ``broyden`` / ``naive`` against torchdeq's solvers on the same ``f``, the
  zoo's MNIST and CIFAR-10 DEQ cells (:mod:`lyadeq_zoo.benchmarks.solvers`).
* ``model``: train-step and eval throughput of ``deq_<ds>``, ``lyadeq_<ds>`` and a plain baseline, FLOPs per
  image and time over the floor (:mod:`lyadeq_zoo.benchmarks.throughput`).
* ``memory``: peak memory of a forward + backward pass with ``ift`` vs ``unroll`` backward as the forward
  solver is forced to run 10 / 30 / 100 iterations (:mod:`lyadeq_zoo.benchmarks.memory`).
* ``attacks``: images/s of PGD-10 and of a whole attack suite (:mod:`lyadeq_zoo.benchmarks.attacks`).
* ``suite_speed``: the ``strong_cpu`` suite's images/s on ``--suite-images`` images against the previous
  implementation (no early stopping, each eps on its own, the transfer attack on every image) in the same run, and
  how many per-image outcomes differ (:mod:`lyadeq_zoo.benchmarks.suite_speed`).
* ``targets``: the project's performance targets, each with the numbers it was judged on
  (:mod:`lyadeq_zoo.benchmarks.targets`).

CPU runs pin the number of torch threads (``--threads``, default 1) and record it. ``--device cuda``
synchronises before every clock read. Output: ``RESULTS/results-<machine>.json`` (machine = ``cpu-<N>core``
or the GPU name) and a PNG beside it, where RESULTS is the checkout's ``benchmarks/`` folder (or, installed
from a wheel, the current directory). In a checkout, a run without ``--json`` (and not ``--quick``) also
regenerates ``benchmarks/README.md`` from every full result there. ``--quick`` is a tiny smoke run (under a
minute). In a checkout: ``python tools/benchmark.py [options]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..benchmarks import common, report, run
from . import command_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="result path (default: benchmarks/results-<machine>[-quick].json in a checkout, else in the current "
        "folder); a PNG goes beside it",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every section (< 1 min)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--suite-images",
        type=int,
        default=40,
        help="sample images (at most 1000) the suite_speed section evaluates, in batches of 100 (default: 40)",
    )
    parser.add_argument(
        "--sections",
        default=",".join(common.SECTIONS),
        help=f"comma-separated subset of {','.join(common.SECTIONS)} (default: all)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    if not 1 <= args.suite_images <= 1000:
        raise SystemExit(f"--suite-images must be in 1..1000 (the shipped sample's size), got {args.suite_images}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was given but torch sees no CUDA device; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu or cuda, got {args.device!r}")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(common.SECTIONS)
    if unknown:
        raise SystemExit(f"unknown --sections {sorted(unknown)}; choose from {', '.join(common.SECTIONS)}")
    result = run.run_benchmark(
        device, args.quick, args.threads, sections, command_line("lyadeq-benchmark", argv), args.suite_images
    )
    path = args.json or common.results_dir() / f"results-{result['machine']}{'-quick' if args.quick else ''}.json"
    print(f"[benchmark] wrote {report.write_result(result, path)}", file=sys.stderr)
    if set(sections) == set(common.SECTIONS):
        print(f"[benchmark] wrote {report.plot(result, path.with_suffix('.png'))}", file=sys.stderr)
        print(report.markdown(result))
        if args.json is None and not args.quick and common.in_checkout():
            print(f"[benchmark] wrote {report.write_readme(common.CHECKOUT_RESULTS_DIR)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
