"""The result's outputs: the JSON file, the 2x2 PNG plot, Markdown tables and ``benchmarks/README.md``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import FORMAT
from .solvers import SOLVER_PAIRS
from .targets import TARGET_ANDERSON_RATIO

if TYPE_CHECKING:  # matplotlib is imported only when a plot is drawn
    from matplotlib.axes import Axes


def write_result(result: Mapping[str, Any], path: Path) -> Path:
    """The result as indented JSON at ``path`` (parent folders created); numpy/tensor scalars as floats."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    return path


def plot(result: Mapping[str, Any], path: Path) -> Path:
    """Four panels (solver time ratios, throughput, backward memory, time over the FLOP floor) as an image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    _plot_solver_ratios(axes[0][0], result)
    _plot_throughput(axes[0][1], result)
    _plot_backward_memory(axes[1][0], result)
    _plot_over_floor(axes[1][1], result)
    fig.suptitle(f"lyadeq-zoo benchmark, {result['machine']} ({result['threads']} thread(s), {result['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_solver_ratios(ax: Axes, result: Mapping[str, Any]) -> None:
    """Bars of ours / torchdeq wall time per solver case, with the Anderson target line."""
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


def _plot_throughput(ax: Axes, result: Mapping[str, Any]) -> None:
    """Train-step and eval images per second of every model (log scale)."""
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


def _plot_backward_memory(ax: Axes, result: Mapping[str, Any]) -> None:
    """Peak extra memory (MiB, log scale) of ``ift`` and ``unroll`` over the forward iterations, per scope."""
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


def _plot_over_floor(ax: Axes, result: Mapping[str, Any]) -> None:
    """Measured time over the FLOP floor (FLOPs / GEMM FLOP/s) of every model, train step and eval."""
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


def _fmt(v: float | None, spec: str = ".2f") -> str:
    """``v`` formatted by ``spec``, ``n/a`` for a missing value."""
    return "n/a" if v is None else format(v, spec)


def markdown(result: Mapping[str, Any]) -> str:
    """The result as Markdown tables (for benchmarks/README.md)."""
    lines = [
        f"### {result['machine']} — {result['device']}, {result['threads']} thread(s), torch {result['torch']}",
        f"Measured {result['date']}; command: `{result['command']}`; {result['seconds']:.0f} s.",
        "",
    ]
    if "solvers" in result:
        lines += _solver_table(result["solvers"])
    if "model" in result:
        lines += _model_table(result["model"], result["gemm"])
    if "memory" in result:
        lines += _memory_table(result["memory"])
    if "attacks" in result:
        lines += _attack_table(result["attacks"])
    if "suite_speed" in result:
        lines += _suite_speed_table(result["suite_speed"])
    lines += ["", "**Targets**", ""]
    for name, t in result["targets"].items():
        lines.append(
            f"- {name}: {'met' if t['met'] else ('not measured' if t['met'] is None else 'NOT met')} — "
            f"`{json.dumps(t['detail'], default=lambda v: round(v, 3))}`"
        )
    return "\n".join(lines) + "\n"


def _solver_table(solv: Mapping[str, Any]) -> list[str]:
    """Lines of the solvers-vs-torchdeq table: one row per case and solver pair."""
    lines = [
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
            lines.append(_solver_row(c, our, their))
    return lines


def _solver_row(c: Mapping[str, Any], our: str, their: str) -> str:
    """One row: our solver ``our`` against torchdeq's ``their`` (``n/a`` where torchdeq did not run)."""
    o, t = c["results"][our], c["results"].get(their)
    cmp = c["ours_vs_torchdeq"].get(our, {})
    return (
        f"| {c['dataset']} | {c['batch']} | {c['cell']} | {c['f_seconds'] * 1e6:.0f} | {our} | "
        f"{_fmt(cmp.get('time_ratio'))} | {o['seconds'] * 1e3:.2f} | "
        f"{'n/a' if t is None else format(t['seconds'] * 1e3, '.2f')} | "
        f"{o['f_evals']} / {'n/a' if t is None else t['f_evals']} | {o['max_rel_residual']:.1e} / "
        f"{'n/a' if t is None else format(t['max_rel_residual'], '.1e')} | "
        f"{o['overhead_per_iter_s'] * 1e6:.0f} / "
        f"{'n/a' if t is None else format(t['overhead_per_iter_s'] * 1e6, '.0f')} |"
    )


def _model_table(mod: Mapping[str, Any], gemm: Mapping[str, Any]) -> list[str]:
    """Lines of the model throughput table, then each data set's cost ratios."""
    lines = [
        "",
        f"**Models** (batch {mod['batch']}, {mod['optimizer']}; floor = FLOPs / measured GEMM "
        f"{gemm['flops_per_s'] / 1e9:.1f} GFLOP/s)",
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
        lines.append(_model_ratios(ds, d["ratios"]))
    return lines


def _model_ratios(ds: str, r: Mapping[str, Any]) -> str:
    """The paragraph of one data set's cost ratios (LyaDEQ/DEQ, DEQ/plain and the split of the first)."""
    return (
        f"\n{ds}: LyaDEQ/DEQ train step {_fmt(r['lyadeq_over_deq_train_step'])}×, eval "
        f"{_fmt(r['lyadeq_over_deq_eval'])}×; DEQ/plain train step {_fmt(r['deq_over_plain_train_step'])}×, "
        f"eval {_fmt(r['deq_over_plain_eval'])}×. Split of the train-step ratio: Lyapunov module alone "
        f"(lyadeq_no_orth/deq) {_fmt(r['lyadeq_no_orth_over_deq_train_step'])}×, orthogonal head alone "
        f"(deq_orth/deq) {_fmt(r['deq_orth_over_deq_train_step'])}×."
    )


def _memory_table(mem: Mapping[str, Any]) -> list[str]:
    """Lines of the backward-memory table: ``ift`` and ``unroll`` per scope and iteration count."""
    lines = [
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
    return lines


def _attack_table(att: Mapping[str, Any]) -> list[str]:
    """Lines of the attack-speed table (PGD-10 on two models, then the suite)."""
    lines = ["", "**Attacks** (CIFAR-10)", "", "| what | model | n | images/s |", "|---|---|---|---|"]
    for name in ("lyadeq_cifar10", "deq_cifar10"):
        r = att["pgd10"][name]
        lines.append(f"| PGD-10 | {name} ({r['weights']}) | {r['n']} | {r['images_per_s']:.1f} |")
    s = att["suite"]
    lines.append(
        f"| suite `{s['suite']}` (clean acc {_fmt(s['clean_accuracy'])}) | {s['model']} | {s['n']} | "
        f"{s['images_per_s']:.3f} |"
    )
    return lines


def _suite_speed_table(speed: Mapping[str, Any]) -> list[str]:
    """Lines of the suite-speed table: seconds per attack before and now, the total, the outcome agreement."""
    lines = [
        "",
        f"**Suite speed** (`{speed['suite']}` on {speed['n']} CIFAR-10 images, {speed['model']} "
        f"({speed['weights']}), batches of {speed['batch_size']}; {speed['clean_correct']} clean-correct): previous "
        "implementation "
        "(`early_stop: false`, each eps on its own, transfer on every sample) vs now, same images and seed",
        "",
        "| attack | previous (s) | now (s) | speed-up |",
        "|---|---|---|---|",
    ]
    for name, (before, now) in speed["per_attack_seconds"].items():
        lines.append(f"| {name} | {before:.1f} | {now:.1f} | {_fmt(before / now if now else None, '.2f')}x |")
    lines.append(
        f"| **whole suite** | {speed['previous_seconds']:.1f} | {speed['seconds']:.1f} | "
        f"**{speed['speedup']:.2f}x** ({speed['previous_images_per_s']:.3f} -> {speed['images_per_s']:.3f} "
        "images/s) |"
    )
    lines += [
        "",
        f"Per-image outcomes that differ: {speed['run_outcomes_differ']} of {speed['run_outcomes_compared']} "
        "(attack, eps, image) outcomes that both measured"
        + (
            f"; {speed['run_outcomes_not_run_now']} not run now (the image was broken already at that eps or a "
            "smaller one)"
            if "run_outcomes_not_run_now" in speed
            else ""
        )
        + f". Worst case per eps, images that differ: {speed['worst_case_differ']}"
        + (
            f"; robust now but broken before: {speed['worst_case_weaker_now']}"
            if "worst_case_weaker_now" in speed
            else ""
        )
        + ".",
    ]
    return lines


GPU_FLOOR_PAGE = "gpu-floor.md"


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
    if (directory / GPU_FLOOR_PAGE).is_file():  # hand-written: the GPU floor and targets, until a device measures them
        parts += [f"GPU floor and targets (computed, not measured): [{GPU_FLOOR_PAGE}]({GPU_FLOOR_PAGE}).", ""]
    for path in sorted(directory.glob("results-*.json")):
        result = json.loads(path.read_text())
        if result.get("format") != FORMAT or result.get("quick"):
            continue
        parts += [markdown(result)]
        if path.with_suffix(".png").is_file():
            parts += [f"![{path.stem}]({path.with_suffix('.png').name})"]
        parts += [""]
    out = directory / "README.md"
    out.write_text("\n".join(parts))
    return out
