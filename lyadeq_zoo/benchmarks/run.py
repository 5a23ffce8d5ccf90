"""One benchmark run: the machine's description, the GEMM yardstick, the chosen sections and the targets,
as one result dict (``format: lyadeq-zoo-bench/1``)."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from .attacks import bench_attacks
from .common import FORMAT, SECTIONS, machine_name
from .memory import bench_memory
from .solvers import bench_solvers
from .suite_speed import bench_suite_speed
from .targets import judge_targets
from .throughput import bench_gemm, bench_models


def run_benchmark(
    device: torch.device,
    quick: bool,
    threads: int,
    sections: Sequence[str],
    command: str,
    suite_images: int = 40,
) -> dict[str, Any]:
    """Measure ``sections`` (a subset of :data:`SECTIONS`) on ``device``; ``command`` is recorded as given;
    ``suite_images``: how many sample images the ``suite_speed`` section evaluates.

    ``threads`` is the torch CPU thread count the caller has set (the memory subprocesses use it too).
    Times are in seconds, memory in bytes; ``seconds`` is the whole run's wall time.
    """
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    start = time.perf_counter()
    result: dict[str, Any] = {
        "format": FORMAT,
        "machine": machine_name(device),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "quick": quick,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    result["gemm"] = bench_gemm(device, quick)
    print(f"[benchmark] GEMM {result['gemm']['flops_per_s'] / 1e9:.1f} GFLOP/s", file=sys.stderr)
    if "solvers" in sections:
        result["solvers"] = bench_solvers(device, quick)
    if "model" in sections:
        result["model"] = bench_models(device, quick, result["gemm"]["flops_per_s"])
    if "memory" in sections:
        result["memory"] = bench_memory(device, quick, threads)
    if "attacks" in sections:
        result["attacks"] = bench_attacks(device, quick)
    if "suite_speed" in sections:
        result["suite_speed"] = bench_suite_speed(device, quick, n=suite_images)
    result["targets"] = judge_targets(result)
    result["seconds"] = time.perf_counter() - start
    return result
