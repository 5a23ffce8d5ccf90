"""What every benchmark section shares: clocks, interleaved timing, the machine's name, real sample images
and zoo models built the same way in every section."""

from __future__ import annotations

import os
import re
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lyadeq_zoo as lz

FORMAT = "lyadeq-zoo-bench/1"
# The checkout's top-level benchmarks/ folder (results, PNGs, README.md); absent in an installed wheel.
CHECKOUT_RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
SECTIONS = ("solvers", "model", "memory", "attacks", "suite_speed")


def in_checkout() -> bool:
    """Whether this package runs from a source checkout (editable install or ``PYTHONPATH``) that has the
    top-level ``benchmarks/`` results folder."""
    return (CHECKOUT_RESULTS_DIR / "README.md").is_file()


def results_dir() -> Path:
    """Where results go by default: the checkout's ``benchmarks/`` folder, else (installed from a wheel) the
    current directory."""
    return CHECKOUT_RESULTS_DIR if in_checkout() else Path.cwd()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one call of ``fn`` (device synchronised before and after)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(
    fns: Mapping[str, Callable[[], Any]], device: torch.device, repeat: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved (A B C A B C ...) so that load changes
    on a shared machine hit every contender alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            times[name].append(clock(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def machine_name(device: torch.device) -> str:
    """``cpu-<N>core`` (logical cores this process may use) or the GPU's name, as a file-name slug."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        name = f"cpu-{cores}core"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def sample_batch(dataset: str, batch: int, device: torch.device, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` real test images ``(batch, C, H, W)`` in [0, 1] of the shipped sample, every ``stride``-th
    (cyclically past its end), and their labels ``(batch,)`` int64."""
    data = lz.get_component("dataset", dataset)(split="test", root="sample")
    items = [data[(i * stride) % len(data)] for i in range(batch)]
    images = torch.stack([img for img, _ in items]).to(device)
    labels = torch.tensor([int(label) for _, label in items], device=device)
    return images, labels


def zoo_model(name: str, device: torch.device, seed: int = 0) -> tuple[nn.Module, str]:
    """The zoo model with pretrained weights when the zoo has them, else seeded random init; and which of
    the two (``"pretrained"`` / ``"random-init"``)."""
    torch.manual_seed(seed)
    if name in lz.list_models(pretrained=True):
        return lz.create_model(name, pretrained=True).to(device), "pretrained"
    return lz.create_model(name).to(device), "random-init"
