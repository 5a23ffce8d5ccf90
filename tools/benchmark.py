#!/usr/bin/env python
"""Speed and memory benchmark: ``python tools/benchmark.py [--json OUT] [--quick] [--threads N] [--device D]``.

Every figure is a time (or memory) measured in this run next to the figure it is compared with, and is
reported as a ratio as well, so results from a loaded or a different machine stay interpretable.

Sections of the result JSON (``format: lyadeq-zoo-bench/1``):

* ``gemm``: the machine's measured float32 matmul throughput (best of a few large square GEMMs), the
  yardstick of the floor below.
* ``solvers``: our ``anderson`` / ``broyden`` / ``naive`` against torchdeq's ``anderson_solver`` /
  ``broyden_solver`` / ``fixed_point_iter`` on the same ``f``: the zoo's MNIST and CIFAR-10 DEQ cells in
  eval mode, with the injection ``x`` computed by the model's backbone from real sample images, batch 128
  and 1024. Two cells per data set: the zoo's initialisation (``init``; the map is nearly constant, a few
  iterations) and the same cell with its ``W2`` scaled up 10x (``stiff``: PyTorch's default init scale, a
  contraction factor nearer 1, as after training: tens of iterations). Same tolerance, same per-sample
  relative-residual stopping rule (torchdeq ``stop_mode="rel"``), same history size, a 100-evaluation
  budget. Reported: median wall time to tolerance (runs interleaved), ``f`` evaluations, the relative
  residual of the returned point (measured afterwards, outside the timing), and the per-iteration
  overhead beyond ``f`` (solver time minus the time of as many calls of ``f`` alone).
* ``model``: train-step (Adam, cross-entropy) and eval (no grad) throughput in images/s of ``deq_<ds>``,
  ``lyadeq_<ds>`` and a plain baseline without DEQ (CIFAR-10: the ``resnet20`` backbone + linear head;
  MNIST: the ``fc`` backbone + linear head), all built from the same seed (same backbone and cell weights).
  Ratios LyaDEQ/DEQ (what the Lyapunov module costs) and DEQ/plain. Also FLOPs per image
  (``torch.utils.flop_counter.FlopCounterMode``: backbone, solver steps, Lyapunov module, backward) and
  measured time over the floor ``FLOPs / measured GEMM FLOP/s``.
* ``memory``: peak memory of a forward + backward pass with ``ift`` vs ``unroll`` backward as the forward
  solver is forced to run 10 / 30 / 100 iterations (``override_solver(model, max_iter=k, tol=0.0)``), for the
  DEQ layer of ``lyadeq_cifar10`` alone (batch 1024) and for the whole model's train step (batch 128).
  Method: on CUDA, ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the pass. On
  CPU (PyTorch keeps no CPU allocator statistics), each setting runs in a fresh subprocess that builds the
  model, warms up with a tiny no-grad pass, and reports the growth of the process's peak resident set size
  (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) over the pass: the extra memory the pass needed, with
  about a MiB of allocator noise.
* ``attacks``: images/s of PGD-10 on ``lyadeq_cifar10`` and ``deq_cifar10``, and of a whole suite
  (``strong``; ``paper`` with ``--quick``) through ``lyadeq_zoo.evaluation.evaluate`` on a few images.
  Misclassified images are never attacked and ``subset: remaining`` attacks only see survivors, so suite
  throughput depends on the weights (random init when the zoo has no pretrained ones: recorded).
* ``targets``: the project's performance targets, each with the numbers it was judged on.

CPU runs pin the number of torch threads (``--threads``, default 1) and record it. ``--device cuda``
synchronises before every clock read. Output: ``benchmarks/results-<machine>.json`` (machine = ``cpu-<N>core``
or the GPU name) and a PNG beside it; without ``--json`` (and not ``--quick``) ``benchmarks/README.md`` is
regenerated from every full result in ``benchmarks/``. ``--quick`` is a tiny smoke run (under a minute).
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a plain checkout

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

FORMAT = "lyadeq-zoo-bench/1"
BENCH_DIR = REPO_ROOT / "benchmarks"
MEMORY_ITERS = (10, 30, 100)
SOLVER_PAIRS = (("anderson", "anderson_solver"), ("broyden", "broyden_solver"), ("naive", "fixed_point_iter"))
TARGET_ANDERSON_RATIO = 0.8
TARGET_MEMORY_RATIO = 5.0
TARGET_LYADEQ_RATIO = 1.3


# -- timing helpers ---------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one call of ``fn`` (device synchronised before and after)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _interleaved(fns: Mapping[str, Callable[[], Any]], device: torch.device, repeat: int, warmup: int = 1) -> dict:
    """Median seconds per call of each function, calls interleaved (A B C A B C ...) so that load changes
    on a shared machine hit every contender alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            times[name].append(_clock(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def _ratio(a: float | None, b: float | None) -> float | None:
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


# -- data -------------------------------------------------------------------------------------------
def sample_batch(dataset: str, batch: int, device: torch.device, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` real test images of the shipped sample, every ``stride``-th (cyclically past its end), and labels."""
    import lyadeq_zoo as lz

    data = lz.get_component("dataset", dataset)(split="test", root="sample")
    items = [data[(i * stride) % len(data)] for i in range(batch)]
    images = torch.stack([img for img, _ in items]).to(device)
    labels = torch.tensor([int(label) for _, label in items], device=device)
    return images, labels


def zoo_model(name: str, device: torch.device, seed: int = 0) -> tuple[nn.Module, str]:
    """The zoo model with pretrained weights when the zoo has them, else seeded random init."""
    import lyadeq_zoo as lz

    torch.manual_seed(seed)
    if name in lz.list_models(pretrained=True):
        return lz.create_model(name, pretrained=True).to(device), "pretrained"
    return lz.create_model(name).to(device), "random-init"


class PlainClassifier(nn.Module):
    """Normalise -> backbone -> linear head: the zoo's feature extractor without the DEQ (a baseline)."""

    def __init__(self, deq_model: nn.Module) -> None:
        import lyadeq_zoo as lz

        super().__init__()
        spec = deq_model.config["model"]
        self.register_buffer("mean", deq_model.mean.clone(), persistent=False)
        self.register_buffer("std", deq_model.std.clone(), persistent=False)
        self.backbone = lz.build_component(
            "backbone",
            spec["backbone"],
            in_chans=spec["in_chans"],
            img_size=spec["img_size"],
            out_features=spec["width"],
        )
        self.head = nn.Linear(spec["width"], spec["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone((x - self.mean) / self.std))


# -- GEMM throughput --------------------------------------------------------------------------------
def bench_gemm(device: torch.device, quick: bool) -> dict[str, Any]:
    """Best float32 FLOP/s of an ``n x n`` matmul (2 n³ FLOPs)."""
    n = (512 if quick else 1024) if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = min(_clock(lambda: a @ b, device) for _ in range(3 if quick else 8))
    return {"n": n, "dtype": "float32", "seconds": best, "flops_per_s": 2 * n**3 / best}


# -- solvers ----------------------------------------------------------------------------------------
def _solver_cases(quick: bool) -> list[tuple[str, int, str]]:
    if quick:
        return [("mnist", 128, "init"), ("mnist", 128, "stiff")]
    return [(ds, b, cell) for ds in ("mnist", "cifar10") for b in (128, 1024) for cell in ("init", "stiff")]


def _solver_case(
    ours: Any,
    td: Any,
    model: nn.Module,
    dataset: str,
    batch: int,
    variant: str,
    device: torch.device,
    repeat: int,
    tol: float,
    max_iter: int,
    m: int,
) -> dict[str, Any]:
    """One solver comparison on the cell of ``model`` (eval mode) with a real injection; see the docstring."""
    images, _ = sample_batch(dataset, batch, device)
    with torch.no_grad():
        x = model.backbone((images - model.mean) / model.std)
    cell = model.deq.cell
    if variant == "stiff":
        cell = copy.deepcopy(cell)
        with torch.no_grad():
            cell.fc2.weight.mul_(10.0)
    calls = [0]

    def f(z: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return cell(z, x)

    z0 = torch.zeros_like(x)
    runs: dict[str, Callable[[], torch.Tensor]] = {
        "anderson": lambda: ours.anderson(f, z0, max_iter=max_iter, tol=tol, m=m)[0],
        "broyden": lambda: ours.broyden(f, z0, max_iter=max_iter, tol=tol)[0],
        "naive": lambda: ours.naive(f, z0, max_iter=max_iter, tol=tol)[0],
    }
    if td is not None:
        runs.update(
            anderson_solver=lambda: td.anderson_solver(f, z0, max_iter=max_iter, tol=tol, stop_mode="rel", m=m)[0],
            broyden_solver=lambda: td.broyden_solver(f, z0, max_iter=max_iter, tol=tol, stop_mode="rel")[0],
            fixed_point_iter=lambda: td.fixed_point_iter(f, z0, max_iter=max_iter, tol=tol, stop_mode="rel")[0],
        )
    with torch.no_grad():
        times = _interleaved(runs, device, repeat, warmup=1)
        rows: dict[str, dict[str, Any]] = {}
        for name, fn in runs.items():
            calls[0] = 0
            z = fn()
            evals = calls[0]
            _, rel = ours.residuals(z, cell(z, x))
            rows[name] = {"seconds": times[name], "f_evals": evals, "max_rel_residual": float(rel.max())}
        # f alone, as many calls as the busiest solver made, at a point near the fixed point.
        n_f = max(1, max(row["f_evals"] for row in rows.values()))
        zf = runs["naive"]()
        t_f = _interleaved({"f": lambda: [cell(zf, x) for _ in range(n_f)]}, device, repeat)["f"] / n_f
    for row in rows.values():
        row["overhead_per_iter_s"] = (row["seconds"] - row["f_evals"] * t_f) / max(row["f_evals"], 1)
    comparisons = {}
    for our, their in SOLVER_PAIRS:
        if their in rows:
            comparisons[our] = {
                "torchdeq": their,
                "time_ratio": _ratio(rows[our]["seconds"], rows[their]["seconds"]),
                "f_evals_ratio": _ratio(rows[our]["f_evals"], rows[their]["f_evals"]),
                "overhead_ratio": _ratio(rows[our]["overhead_per_iter_s"], rows[their]["overhead_per_iter_s"]),
            }
    return {
        "dataset": dataset,
        "batch": batch,
        "cell": variant,
        "state_dim": x.shape[1],
        "f_seconds": t_f,
        "results": rows,
        "ours_vs_torchdeq": comparisons,
    }


def bench_solvers(device: torch.device, quick: bool, tol: float = 1e-4, max_iter: int = 100) -> dict[str, Any]:
    """Our solvers vs torchdeq's on the zoo's DEQ cells (see the module docstring)."""
    from lyadeq_zoo.deq import solvers as ours

    try:
        from torchdeq import solver as td
    except ImportError as err:
        td = None
        missing = f"torchdeq is not installed ({err}); install it with `pip install torchdeq==0.1.0` to compare"
        print(f"[benchmark] {missing}; running our solvers alone", file=sys.stderr)
    repeat = 3 if quick else 21
    m = 5  # the zoo's Anderson history (the solver default); torchdeq gets the same
    cases = []
    models: dict[str, tuple[nn.Module, str]] = {}
    for dataset, batch, variant in _solver_cases(quick):
        if dataset not in models:
            models[dataset] = zoo_model(f"lyadeq_{dataset}", device)
        model, weights = models[dataset]
        if variant == "stiff" and weights == "pretrained":
            # Scaling a trained W2 by 10 makes the map non-contractive (nothing converges); the trained
            # cell itself is the realistic hard case then.
            continue
        model.eval()
        case = _solver_case(ours, td, model, dataset, batch, variant, device, repeat, tol, max_iter, m)
        case["weights"] = weights
        cases.append(case)
        ratios = case["ours_vs_torchdeq"].items()
        print(
            f"[benchmark] solvers {dataset} b{batch} {variant}: "
            + ", ".join(f"{k} {v['time_ratio']:.2f}x" for k, v in ratios if v["time_ratio"] is not None),
            file=sys.stderr,
        )
    out: dict[str, Any] = {
        "tol": tol,
        "max_iter": max_iter,
        "anderson_m": m,
        "stop_rule": "per-sample relative residual "
        "||f(z)-z|| / (||f(z)|| + eps) <= tol for every sample (torchdeq: stop_mode='rel')",
        "repeat": repeat,
        "cases": cases,
        "notes": "times are medians of interleaved runs; max_rel_residual is measured at the returned point after "
        "the run (torchdeq returns f(z) of its best z, one application past the point it tested; ours "
        "returns the tested point). Anderson lam: ours is relative to the mean squared residual, "
        "torchdeq's is absolute (both 1e-4, their defaults). 'stiff' = the cell with W2 scaled 10x.",
    }
    if td is None:
        out["torchdeq"] = missing
    else:
        from importlib.metadata import version

        out["torchdeq"] = version("torchdeq")
    return out


# -- FLOPs ------------------------------------------------------------------------------------------
def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matmuls/convolutions ``fn`` runs (forward and backward), by ``FlopCounterMode``'s registry.

    Only the global total is kept: ``FlopCounterMode``'s per-module tracker installs backward hooks that
    break ``autograd.grad`` calls nested inside a backward hook (the ``ift`` adjoint solve), so its dispatch
    mode is entered without the tracker.
    """
    from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.flop_counts.clear()
    with _FlopCounterMode(counter):
        fn()
    return int(counter.get_total_flops())


# -- models -----------------------------------------------------------------------------------------
def _models_case(dataset: str, device: torch.device, batch: int, repeat: int, gemm_flops: float) -> dict[str, Any]:
    """Train-step / eval throughput, FLOPs and time over the floor of deq, lyadeq and plain on ``dataset``."""
    models: dict[str, nn.Module] = {}
    weights: dict[str, str] = {}
    # deq_orth / lyadeq_no_orth split the LyaDEQ/DEQ ratio into the orthogonal head and the Lyapunov module.
    for variant in ("deq", "lyadeq", "deq_orth", "lyadeq_no_orth"):
        models[f"{variant}_{dataset}"], weights[f"{variant}_{dataset}"] = zoo_model(f"{variant}_{dataset}", device)
    deq_model = models[f"deq_{dataset}"]
    torch.manual_seed(0)
    plain_name = f"plain_{deq_model.config['model']['backbone']['type']}_{dataset}"
    models[plain_name] = PlainClassifier(deq_model).to(device)
    weights[plain_name] = "random-init"
    images, labels = sample_batch(dataset, batch, device)
    optims = {name: torch.optim.Adam(model.parameters(), lr=1e-3) for name, model in models.items()}

    def train_step(name: str) -> None:
        model, opt = models[name], optims[name]
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        opt.step()

    def eval_step(name: str) -> None:
        model = models[name]
        model.eval()
        with torch.no_grad():
            model(images)

    train_t = _interleaved({n: functools.partial(train_step, n) for n in models}, device, repeat)
    eval_t = _interleaved({n: functools.partial(eval_step, n) for n in models}, device, repeat)
    rows = {}
    for name, model in models.items():
        row: dict[str, Any] = {
            "weights": weights[name],
            "train_step_s": train_t[name],
            "train_images_per_s": batch / train_t[name],
            "eval_s": eval_t[name],
            "eval_images_per_s": batch / eval_t[name],
        }
        deq_layer = getattr(model, "deq", None)
        if deq_layer is not None:
            eval_step(name)
            row["eval_f_evals"] = int(deq_layer.last_info["n_f_evals"])
            train_step(name)
            row["train_f_evals"] = int(deq_layer.last_info["n_f_evals"])
        # FLOPs of what was timed (eval: forward; train: forward + backward), per image.
        row["eval_flops_per_image"] = count_flops(functools.partial(eval_step, name)) / batch
        row["train_flops_per_image"] = count_flops(functools.partial(train_step, name)) / batch
        row["eval_over_floor"] = _ratio(eval_t[name], row["eval_flops_per_image"] * batch / gemm_flops)
        row["train_over_floor"] = _ratio(train_t[name], row["train_flops_per_image"] * batch / gemm_flops)
        rows[name] = row
    with torch.no_grad():
        deq_model.eval()
        normed = (images - deq_model.mean) / deq_model.std
        u = deq_model.backbone(normed)
        backbone_flops = count_flops(lambda: deq_model.backbone(normed))
        cell_flops = count_flops(lambda: deq_model.deq.cell(u, u))
    deq, lya, orth, no_orth = (f"{v}_{dataset}" for v in ("deq", "lyadeq", "deq_orth", "lyadeq_no_orth"))
    return {
        "models": rows,
        "flops_breakdown_per_image": {"backbone": backbone_flops / batch, "cell_per_f_eval": cell_flops / batch},
        "ratios": {
            "lyadeq_over_deq_train_step": _ratio(train_t[lya], train_t[deq]),
            "lyadeq_over_deq_eval": _ratio(eval_t[lya], eval_t[deq]),
            # the Lyapunov module alone (both with a linear head) and the orthogonal head alone (both plain DEQ)
            "lyadeq_no_orth_over_deq_train_step": _ratio(train_t[no_orth], train_t[deq]),
            "deq_orth_over_deq_train_step": _ratio(train_t[orth], train_t[deq]),
            "deq_over_plain_train_step": _ratio(train_t[deq], train_t[plain_name]),
            "deq_over_plain_eval": _ratio(eval_t[deq], eval_t[plain_name]),
        },
    }


def bench_models(device: torch.device, quick: bool, gemm_flops: float) -> dict[str, Any]:
    """Model throughput and FLOP floor per data set (see the module docstring)."""
    batch = 16 if quick else 128
    repeat = 2 if quick else 9
    datasets = ("mnist",) if quick else ("mnist", "cifar10")
    out: dict[str, Any] = {"batch": batch, "repeat": repeat, "optimizer": "Adam lr 1e-3", "datasets": {}}
    for dataset in datasets:
        out["datasets"][dataset] = _models_case(dataset, device, batch, repeat, gemm_flops)
        print(f"[benchmark] models {dataset}: " + json.dumps(out["datasets"][dataset]["ratios"]), file=sys.stderr)
    return out


# -- memory -----------------------------------------------------------------------------------------
def _proc_status(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes (Linux), None where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak-RSS mark to its current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _memory_pass(setting: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Build, warm up, then one forward + backward pass under ``setting``; returns the pass's extra peak memory.

    ``setting``: ``{"scope": "layer"|"model", "mode": "ift"|"unroll", "iters": k, "batch": B}``.
    """
    from lyadeq_zoo.deq.layer import override_backward, override_solver

    torch.set_num_threads(int(setting.get("threads", 1)))
    model, _ = zoo_model("lyadeq_cifar10", device)
    model.train()
    images, labels = sample_batch("cifar10", int(setting["batch"]), device)
    with torch.no_grad():  # in chunks, so that making the injection sets no high peak of its own
        u = torch.cat([model.backbone((chunk - model.mean) / model.std) for chunk in images.split(64)])

    def run() -> None:
        if setting["scope"] == "layer":
            x = u.detach().requires_grad_()
            z_star, _ = model.deq(x)
            z_star.square().sum().backward()
        else:
            F.cross_entropy(model(images), labels).backward()

    with torch.no_grad(), override_solver(model, max_iter=2, tol=0.0):  # warm-up: kernels, thread pools
        model.deq(u[:2])
    model.zero_grad(set_to_none=True)
    gc.collect()
    with (
        override_solver(model, max_iter=int(setting["iters"]), tol=0.0),
        override_backward(model, {"type": setting["mode"]}),
    ):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            run()
            torch.cuda.synchronize(device)
            extra = torch.cuda.max_memory_allocated(device) - base
            method = "torch.cuda.max_memory_allocated - memory_allocated before the pass"
        elif _proc_status("VmHWM") is not None and _reset_peak_rss():
            # Linux: reset the peak-RSS mark to the current RSS, then read the peak after the pass.
            base = _proc_status("VmRSS")
            run()
            extra = _proc_status("VmHWM") - base
            method = "peak RSS (VmHWM, reset via /proc/self/clear_refs) minus RSS before the pass, fresh subprocess"
        else:
            # ru_maxrss also counts the parent's RSS at fork time, hence a small launcher is best here.
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            run()
            extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * (
                1 if sys.platform == "darwin" else 1024  # ru_maxrss is in KiB on Linux, bytes on macOS
            )
            method = "growth of ru_maxrss over the pass, in a fresh subprocess"
    return {**setting, "peak_extra_bytes": int(extra), "method": method}


def bench_memory(device: torch.device, quick: bool, threads: int) -> dict[str, Any]:
    iters = (20,) if quick else MEMORY_ITERS
    scopes = {"layer": 1024} if quick else {"layer": 1024, "model": 128}
    rows = []
    for scope, batch in scopes.items():
        for k in iters:
            for mode in ("ift", "unroll"):
                setting = {"scope": scope, "mode": mode, "iters": k, "batch": batch, "threads": threads}
                if device.type == "cuda":
                    gc.collect()
                    torch.cuda.empty_cache()
                    rows.append(_memory_pass(setting, device))
                else:
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(setting)]
                    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                    if proc.returncode != 0:
                        raise RuntimeError(f"memory subprocess {setting} failed:\n{proc.stderr[-2000:]}")
                    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    summary = {}
    for scope in scopes:
        for k in iters:
            by_mode = {r["mode"]: r["peak_extra_bytes"] for r in rows if r["scope"] == scope and r["iters"] == k}
            summary[f"{scope}_iters{k}_unroll_over_ift"] = _ratio(by_mode["unroll"], max(by_mode["ift"], 1))
    print(f"[benchmark] memory: {json.dumps(summary)}", file=sys.stderr)
    return {"model": "lyadeq_cifar10", "iters": list(iters), "rows": rows, "ratios": summary}


# -- attacks ----------------------------------------------------------------------------------------
def bench_attacks(device: torch.device, quick: bool) -> dict[str, Any]:
    from lyadeq_zoo.attacks.base import create_attack
    from lyadeq_zoo.evaluation import evaluate

    n_pgd = 2 if quick else 32
    n_suite = 2 if quick else 20
    suite = "paper" if quick else "strong"
    # A stride through the class-balanced sample, so that the few images cover every class.
    images, labels = sample_batch("cifar10", max(n_pgd, n_suite), device, stride=37)
    pgd = create_attack("pgd", eps=8 / 255, alpha=2 / 255, steps=10)
    out: dict[str, Any] = {"pgd10": {}, "suite": {}}
    models = {}
    x, y = images[:n_pgd], labels[:n_pgd]
    for name in ("lyadeq_cifar10", "deq_cifar10"):
        models[name], weights = zoo_model(name, device)
        models[name].eval()
        seconds = _interleaved({name: functools.partial(pgd, models[name], x, y)}, device, 1 if quick else 3)[name]
        out["pgd10"][name] = {"n": n_pgd, "weights": weights, "seconds": seconds, "images_per_s": n_pgd / seconds}
    out["pgd10"]["lyadeq_over_deq_time"] = _ratio(
        out["pgd10"]["lyadeq_cifar10"]["seconds"], out["pgd10"]["deq_cifar10"]["seconds"]
    )
    data = torch.utils.data.TensorDataset(images[:n_suite].cpu(), labels[:n_suite].cpu())
    model = models["lyadeq_cifar10"]
    start = time.perf_counter()
    result = evaluate(model, data, suite, device=device, progress=False, batch_size=n_suite, dataset="cifar10")
    _sync(device)
    seconds = time.perf_counter() - start
    clean = result.get("clean", {})
    out["suite"] = {
        "model": "lyadeq_cifar10",
        "suite": suite,
        "n": n_suite,
        "seconds": seconds,
        "images_per_s": n_suite / seconds,
        "clean_accuracy": clean.get("accuracy"),
        "note": "only clean-correct images are attacked; 'remaining' attacks only see survivors",
    }
    print(
        f"[benchmark] attacks: pgd10 {out['pgd10']['lyadeq_cifar10']['images_per_s']:.1f} img/s, "
        f"{suite} suite {out['suite']['images_per_s']:.2f} img/s",
        file=sys.stderr,
    )
    return out


# -- targets ----------------------------------------------------------------------------------------
def judge_targets(result: Mapping[str, Any]) -> dict[str, Any]:
    """The performance targets, each ``{"met": bool|None, "detail": ...}`` (None: not measured in this run)."""
    targets: dict[str, Any] = {}
    solv = result.get("solvers", {})
    rows = []
    for case in solv.get("cases", []):
        cmp = case["ours_vs_torchdeq"].get("anderson")
        if case["batch"] != 128 or cmp is None:
            continue
        ours, theirs = case["results"]["anderson"], case["results"]["anderson_solver"]
        ok = (
            cmp["time_ratio"] <= TARGET_ANDERSON_RATIO
            and ours["f_evals"] <= theirs["f_evals"]
            and ours["max_rel_residual"] <= solv["tol"]
        )
        rows.append(
            {
                "case": f"{case['dataset']}-{case['cell']}",
                "time_ratio": cmp["time_ratio"],
                "f_evals": [ours["f_evals"], theirs["f_evals"]],
                "met": ok,
            }
        )
    targets["anderson_b128_time_le_0.8x_torchdeq"] = {
        "met": all(r["met"] for r in rows) if rows else None,
        "detail": rows,
    }
    mem = result.get("memory", {})
    mrows = mem.get("rows", [])
    detail = {}
    met = None
    for scope in ("layer", "model"):
        ift = {r["iters"]: r["peak_extra_bytes"] for r in mrows if r["scope"] == scope and r["mode"] == "ift"}
        unroll = {r["iters"]: r["peak_extra_bytes"] for r in mrows if r["scope"] == scope and r["mode"] == "unroll"}
        if not ift:
            continue
        kmax = max(ift)
        ratio = unroll[kmax] / max(ift[kmax], 1)
        growth = ift[kmax] / max(ift[min(ift)], 1)
        detail[scope] = {"iters": kmax, "unroll_over_ift": ratio, "ift_growth": growth}
        if scope == "layer":
            met = ratio >= TARGET_MEMORY_RATIO and growth <= 1.5
    targets["ift_memory_flat_unroll_ge_5x"] = {"met": met, "detail": detail}
    lrows = {
        ds: d["ratios"]["lyadeq_over_deq_train_step"] for ds, d in result.get("model", {}).get("datasets", {}).items()
    }
    targets["lyadeq_train_step_le_1.3x_deq"] = {
        "met": all(r <= TARGET_LYADEQ_RATIO for r in lrows.values()) if lrows else None,
        "detail": lrows,
    }
    return targets


# -- output -----------------------------------------------------------------------------------------
def plot(result: Mapping[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    cases = result["solvers"]["cases"]
    labels = [f"{c['dataset']}\nb{c['batch']} {c['cell']}" for c in cases]
    width = 0.27
    for i, (our, _) in enumerate(SOLVER_PAIRS):
        vals = [c["ours_vs_torchdeq"].get(our, {}).get("time_ratio") or 0 for c in cases]
        ax.bar([j + (i - 1) * width for j in range(len(cases))], vals, width, label=our)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(TARGET_ANDERSON_RATIO, color="r", ls="--", lw=0.8, label="target (anderson, b128)")
    ax.set_xticks(range(len(cases)), labels, fontsize=7)
    ax.set_ylabel("wall time to tol: ours / torchdeq")
    ax.set_title("Solvers on the zoo's DEQ cells")
    ax.legend(fontsize=7)

    ax = axes[0][1]
    names, train, evals = [], [], []
    for d in result["model"]["datasets"].values():
        for name, row in d["models"].items():
            names.append(name)
            train.append(row["train_images_per_s"])
            evals.append(row["eval_images_per_s"])
    idx = range(len(names))
    ax.bar([i - 0.2 for i in idx], train, 0.4, label="train step")
    ax.bar([i + 0.2 for i in idx], evals, 0.4, label="eval")
    ax.set_yscale("log")
    ax.set_xticks(list(idx), names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("images / s")
    ax.set_title(f"Model throughput (batch {result['model']['batch']})")
    ax.legend(fontsize=7)

    ax = axes[1][0]
    rows = result["memory"]["rows"]
    for scope in sorted({r["scope"] for r in rows}):
        for mode in ("ift", "unroll"):
            pts = sorted(
                (r["iters"], r["peak_extra_bytes"] / 2**20) for r in rows if r["scope"] == scope and r["mode"] == mode
            )
            ax.plot([p[0] for p in pts], [max(p[1], 1e-2) for p in pts], "o-", label=f"{scope} {mode}")
    ax.set_xlabel("forward solver iterations (tol 0)")
    ax.set_ylabel("peak extra memory of fwd+bwd (MiB)")
    ax.set_yscale("log")
    ax.set_title("Backward memory: ift vs unroll (lyadeq_cifar10)")
    ax.legend(fontsize=7)

    ax = axes[1][1]
    floors = [
        (n, r["train_over_floor"], r["eval_over_floor"])
        for d in result["model"]["datasets"].values()
        for n, r in d["models"].items()
    ]
    idx = range(len(floors))
    ax.bar([i - 0.2 for i in idx], [f[1] for f in floors], 0.4, label="train step")
    ax.bar([i + 0.2 for i in idx], [f[2] for f in floors], 0.4, label="eval")
    ax.set_yscale("log")
    ax.set_xticks(list(idx), [f[0] for f in floors], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("measured time / (FLOPs / GEMM FLOP/s)")
    ax.set_title("Time over the FLOP floor")
    ax.legend(fontsize=7)
    fig.suptitle(f"lyadeq-zoo benchmark, {result['machine']} ({result['threads']} thread(s), {result['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def markdown(result: Mapping[str, Any]) -> str:
    """The result as Markdown tables (for benchmarks/README.md)."""
    lines = [
        f"### {result['machine']} — {result['device']}, {result['threads']} thread(s), torch {result['torch']}",
        f"Measured {result['date']}; command: `{result['command']}`; {result['seconds']:.0f} s.",
        "",
    ]
    solv = result["solvers"]
    lines += [
        f"**Solvers vs torchdeq {solv.get('torchdeq')}** (tol {solv['tol']:g} relative, budget {solv['max_iter']}; "
        "ratio = ours / torchdeq wall time to tolerance; f-evals ours/theirs; overhead = solver time beyond f "
        "per iteration, µs)",
        "",
        "| data | batch | cell | f (µs) | solver | time ratio | ours (ms) | torchdeq (ms) | f-evals | "
        "max rel res ours / theirs | overhead µs ours / theirs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in solv["cases"]:
        for our, their in SOLVER_PAIRS:
            o, t = c["results"][our], c["results"].get(their)
            cmp = c["ours_vs_torchdeq"].get(our, {})
            lines.append(
                f"| {c['dataset']} | {c['batch']} | {c['cell']} | {c['f_seconds'] * 1e6:.0f} | {our} | "
                f"{_fmt(cmp.get('time_ratio'))} | {o['seconds'] * 1e3:.2f} | "
                f"{'n/a' if t is None else format(t['seconds'] * 1e3, '.2f')} | "
                f"{o['f_evals']} / {'n/a' if t is None else t['f_evals']} | {o['max_rel_residual']:.1e} / "
                f"{'n/a' if t is None else format(t['max_rel_residual'], '.1e')} | "
                f"{o['overhead_per_iter_s'] * 1e6:.0f} / "
                f"{'n/a' if t is None else format(t['overhead_per_iter_s'] * 1e6, '.0f')} |"
            )
    mod = result["model"]
    lines += [
        "",
        f"**Models** (batch {mod['batch']}, {mod['optimizer']}; floor = FLOPs / measured GEMM "
        f"{result['gemm']['flops_per_s'] / 1e9:.1f} GFLOP/s)",
        "",
        "| model | weights | train img/s | eval img/s | f-evals train/eval | MFLOP/img train/eval | "
        "train × floor | eval × floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in mod["datasets"].values():
        for name, r in d["models"].items():
            fe = f"{r['train_f_evals']}/{r['eval_f_evals']}" if "train_f_evals" in r else "-"
            lines.append(
                f"| {name} | {r['weights']} | {r['train_images_per_s']:.0f} | {r['eval_images_per_s']:.0f} | {fe} | "
                f"{r['train_flops_per_image'] / 1e6:.1f} / {r['eval_flops_per_image'] / 1e6:.1f} | "
                f"{_fmt(r['train_over_floor'], '.1f')} | {_fmt(r['eval_over_floor'], '.1f')} |"
            )
    for ds, d in mod["datasets"].items():
        r = d["ratios"]
        lines.append(
            f"\n{ds}: LyaDEQ/DEQ train step {_fmt(r['lyadeq_over_deq_train_step'])}×, eval "
            f"{_fmt(r['lyadeq_over_deq_eval'])}×; DEQ/plain train step {_fmt(r['deq_over_plain_train_step'])}×, "
            f"eval {_fmt(r['deq_over_plain_eval'])}×. Split of the train-step ratio: Lyapunov module alone "
            f"(lyadeq_no_orth/deq) {_fmt(r['lyadeq_no_orth_over_deq_train_step'])}×, orthogonal head alone "
            f"(deq_orth/deq) {_fmt(r['deq_orth_over_deq_train_step'])}×."
        )
    mem = result["memory"]
    lines += [
        "",
        f"**Backward memory** ({mem['model']}, forward solver forced to k iterations with tol 0; "
        f"{mem['rows'][0]['method']})",
        "",
        "| scope | batch | k | ift (MiB) | unroll (MiB) | unroll / ift |",
        "|---|---|---|---|---|---|",
    ]
    for scope in sorted({r["scope"] for r in mem["rows"]}):
        for k in mem["iters"]:
            by = {r["mode"]: r for r in mem["rows"] if r["scope"] == scope and r["iters"] == k}
            lines.append(
                f"| {scope} | {by['ift']['batch']} | {k} | {by['ift']['peak_extra_bytes'] / 2**20:.1f} | "
                f"{by['unroll']['peak_extra_bytes'] / 2**20:.1f} | "
                f"{_fmt(mem['ratios'][f'{scope}_iters{k}_unroll_over_ift'], '.1f')} |"
            )
    att = result["attacks"]
    lines += ["", "**Attacks** (CIFAR-10)", "", "| what | model | n | images/s |", "|---|---|---|---|"]
    for name in ("lyadeq_cifar10", "deq_cifar10"):
        r = att["pgd10"][name]
        lines.append(f"| PGD-10 | {name} ({r['weights']}) | {r['n']} | {r['images_per_s']:.1f} |")
    s = att["suite"]
    lines.append(
        f"| suite `{s['suite']}` (clean acc {_fmt(s['clean_accuracy'])}) | {s['model']} | {s['n']} | "
        f"{s['images_per_s']:.3f} |"
    )
    lines += ["", "**Targets**", ""]
    for name, t in result["targets"].items():
        lines.append(
            f"- {name}: {'met' if t['met'] else ('not measured' if t['met'] is None else 'NOT met')} — "
            f"`{json.dumps(t['detail'], default=lambda v: round(v, 3))}`"
        )
    return "\n".join(lines) + "\n"


def write_readme(directory: Path) -> Path:
    """Regenerate ``benchmarks/README.md`` from every full (non-quick) result JSON in ``directory``."""
    parts = [
        "# Benchmarks",
        "",
        "Generated by `python tools/benchmark.py` (see its docstring for what is measured and how). Every figure is "
        "measured in the same run as the figure it is compared with; ratios are what to read across machines.",
        "Reproduce: `OMP_NUM_THREADS=1 python tools/benchmark.py --threads 1` (CPU) or "
        "`python tools/benchmark.py --device cuda`.",
        "",
    ]
    for path in sorted(directory.glob("results-*.json")):
        result = json.loads(path.read_text())
        if result.get("format") != FORMAT or result.get("quick"):
            continue
        parts += [markdown(result), f"![{path.stem}]({path.with_suffix('.png').name})", ""]
    out = directory / "README.md"
    out.write_text("\n".join(parts))
    return out


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
    if args.memory_child is not None:  # internal: one memory measurement in a fresh process
        print(json.dumps(_memory_pass(json.loads(args.memory_child), device)))
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"solvers", "model", "memory", "attacks"}
    if unknown:
        raise SystemExit(f"unknown --sections {sorted(unknown)}; choose from solvers, model, memory, attacks")
    start = time.perf_counter()
    machine = machine_name(device)
    result: dict[str, Any] = {
        "format": FORMAT,
        "machine": machine,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python tools/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    result["gemm"] = bench_gemm(device, args.quick)
    print(f"[benchmark] GEMM {result['gemm']['flops_per_s'] / 1e9:.1f} GFLOP/s", file=sys.stderr)
    if "solvers" in sections:
        result["solvers"] = bench_solvers(device, args.quick)
    if "model" in sections:
        result["model"] = bench_models(device, args.quick, result["gemm"]["flops_per_s"])
    if "memory" in sections:
        result["memory"] = bench_memory(device, args.quick, args.threads)
    if "attacks" in sections:
        result["attacks"] = bench_attacks(device, args.quick)
    result["targets"] = judge_targets(result)
    result["seconds"] = time.perf_counter() - start
    path = args.json or BENCH_DIR / f"results-{machine}{'-quick' if args.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"[benchmark] wrote {path}", file=sys.stderr)
    if set(sections) == {"solvers", "model", "memory", "attacks"}:
        print(f"[benchmark] wrote {plot(result, path.with_suffix('.png'))}", file=sys.stderr)
        print(markdown(result))
        if args.json is None and not args.quick:
            print(f"[benchmark] wrote {write_readme(BENCH_DIR)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
