"""Section ``solvers``: our ``anderson`` / ``broyden`` / ``naive`` against torchdeq's ``anderson_solver`` /
``broyden_solver`` / ``fixed_point_iter`` on the same ``f``.

``f`` is the zoo's MNIST and CIFAR-10 DEQ cell in eval mode, with the injection ``x`` computed by the model's
backbone from real sample images, batch 128 and 1024. Two cells per data set: the zoo's initialisation
(``init``; the map is nearly constant, a few iterations) and the same cell with its ``W2`` scaled up 10x
(``stiff``: PyTorch's default init scale, a contraction factor nearer 1, as after training: tens of
iterations). Same tolerance, same per-sample relative-residual stopping rule (torchdeq ``stop_mode="rel"``),
same history size, a 100-evaluation budget. Reported: median wall time to tolerance (runs interleaved),
``f`` evaluations, the relative residual of the returned point (measured afterwards, outside the timing),
and the per-iteration overhead beyond ``f`` (solver time minus the time of as many calls of ``f`` alone).
Without torchdeq installed, our solvers run alone and the section says why.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from importlib.metadata import version
from types import ModuleType
from typing import Any

import torch
from torch import nn

from lyadeq_zoo.deq import solvers as ours

from .common import interleaved, ratio, sample_batch, zoo_model

# (our solver, torchdeq's counterpart) in the order the tables and the plot show them.
SOLVER_PAIRS = (("anderson", "anderson_solver"), ("broyden", "broyden_solver"), ("naive", "fixed_point_iter"))


def solver_cases(quick: bool) -> list[tuple[str, int, str]]:
    """``(dataset, batch, cell variant)`` of every comparison to run."""
    if quick:
        return [("mnist", 128, "init"), ("mnist", 128, "stiff")]
    return [(ds, b, cell) for ds in ("mnist", "cifar10") for b in (128, 1024) for cell in ("init", "stiff")]


def solver_case(
    td: ModuleType | None,
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
    """One solver comparison on the cell of ``model`` (eval mode) with a real injection; ``td`` is torchdeq's
    solver module, or None to run ours alone. Times in seconds (median of ``repeat`` interleaved runs)."""
    images, _ = sample_batch(dataset, batch, device)
    with torch.no_grad():
        x = model.backbone((images - model.mean) / model.std)
    cell = _cell_variant(model.deq.cell, variant)
    calls = [0]

    def f(z: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return cell(z, x)

    runs = _solver_runs(td, f, torch.zeros_like(x), tol, max_iter, m)
    with torch.no_grad():
        rows, t_f = _measure(runs, calls, cell, x, device, repeat)
    return {
        "dataset": dataset,
        "batch": batch,
        "cell": variant,
        "state_dim": x.shape[1],
        "f_seconds": t_f,
        "results": rows,
        "ours_vs_torchdeq": _comparisons(rows),
    }


def _cell_variant(cell: nn.Module, variant: str) -> nn.Module:
    """The cell itself (``init``) or a copy with its ``W2`` scaled 10x (``stiff``)."""
    if variant != "stiff":
        return cell
    cell = copy.deepcopy(cell)
    with torch.no_grad():
        cell.fc2.weight.mul_(10.0)
    return cell


def _solver_runs(
    td: ModuleType | None, f: ours.Map, z0: torch.Tensor, tol: float, max_iter: int, m: int
) -> dict[str, Callable[[], torch.Tensor]]:
    """``{solver name: a call returning z*}``: ours, and torchdeq's counterparts when ``td`` is given."""
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
    return runs


def _measure(
    runs: dict[str, Callable[[], torch.Tensor]],
    calls: list[int],
    cell: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    repeat: int,
) -> tuple[dict[str, dict[str, Any]], float]:
    """Per solver: seconds, ``f`` evaluations (counted in ``calls[0]``), the residual of the returned point
    and the overhead per iteration; and the seconds of one uncounted call ``cell(z, x)`` of ``f``."""
    times = interleaved(runs, device, repeat, warmup=1)
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
    t_f = interleaved({"f": lambda: [cell(zf, x) for _ in range(n_f)]}, device, repeat)["f"] / n_f
    for row in rows.values():
        row["overhead_per_iter_s"] = (row["seconds"] - row["f_evals"] * t_f) / max(row["f_evals"], 1)
    return rows, t_f


def _comparisons(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Ours over torchdeq's (time, ``f`` evaluations, overhead) for every pair that both ran."""
    comparisons = {}
    for our, their in SOLVER_PAIRS:
        if their in rows:
            comparisons[our] = {
                "torchdeq": their,
                "time_ratio": ratio(rows[our]["seconds"], rows[their]["seconds"]),
                "f_evals_ratio": ratio(rows[our]["f_evals"], rows[their]["f_evals"]),
                "overhead_ratio": ratio(rows[our]["overhead_per_iter_s"], rows[their]["overhead_per_iter_s"]),
            }
    return comparisons


def bench_solvers(device: torch.device, quick: bool, tol: float = 1e-4, max_iter: int = 100) -> dict[str, Any]:
    """Our solvers vs torchdeq's on the zoo's DEQ cells (see the module docstring)."""
    try:
        from torchdeq import solver as td  # optional: a dev dependency, imported only to compare
    except ImportError as err:
        td = None
        missing = f"torchdeq is not installed ({err}); install it with `pip install torchdeq==0.1.0` to compare"
        print(f"[benchmark] {missing}; running our solvers alone", file=sys.stderr)
    repeat = 3 if quick else 21
    m = 5  # the zoo's Anderson history (the solver default); torchdeq gets the same
    cases = []
    models: dict[str, tuple[nn.Module, str]] = {}
    for dataset, batch, variant in solver_cases(quick):
        if dataset not in models:
            models[dataset] = zoo_model(f"lyadeq_{dataset}", device)
        model, weights = models[dataset]
        if variant == "stiff" and weights == "pretrained":
            # Scaling a trained W2 by 10 makes the map non-contractive (nothing converges); the trained
            # cell itself is the realistic hard case then.
            continue
        model.eval()
        case = solver_case(td, model, dataset, batch, variant, device, repeat, tol, max_iter, m)
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
    out["torchdeq"] = missing if td is None else version("torchdeq")
    return out
