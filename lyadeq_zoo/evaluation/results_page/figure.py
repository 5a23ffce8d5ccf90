"""The page's robustness-curve figure, one PNG per data set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...plotting import _pyplot
from ..result import attack_curve, clean_pct, stability_curve, worst_curve
from .entries import ModelEntry
from .formatting import STABILITY_COLUMNS, TABLE_EPS, title

CURVE_MAX_EPS = 20  # the paper's Figure 4 range, x 1/255


def curve_figure(models: Sequence[ModelEntry], path: Path) -> Path | None:
    """One PNG per data set: left, PGD accuracy against eps (ours solid, the paper's Table 1 dotted);
    right, our worst case over the suite's attacks, with the strong suite's worst case as stars.
    Our curves come from the ``curve`` JSON (eps 0..20/255), else the ``paper`` JSON (0..8/255); eps 0 is
    the clean accuracy. When some strong result has them (:func:`stability_models`), a third panel shows the
    solver's statistics at the strong suite's worst-case inputs against eps. Returns None (no file) when no model
    of the data set has a result."""
    drawn = [m for m in models if m.results.get("curve") or m.results.get("paper") or m.results.get("strong")]
    if not drawn:
        return None
    plt = _pyplot()
    stable = stability_models(drawn)
    if stable:
        fig, (ax_pgd, ax_worst, ax_stable) = plt.subplots(1, 3, figsize=(16.5, 4.4), sharey=True)
    else:
        fig, (ax_pgd, ax_worst) = plt.subplots(1, 2, figsize=(11.5, 4.4), sharey=True)
    colors = plt.get_cmap("tab10")
    for k, m in enumerate(drawn):
        _draw_model(ax_pgd, ax_worst, m, colors(k % 10))
    ax_pgd.set_title("PGD (paper schedule); dotted: the paper's Table 1")
    ax_worst.set_title("worst case over attacks; stars: strong suite")
    axes = [ax_pgd, ax_worst]
    if stable:
        _draw_stability(ax_stable, stable, {m.name: colors(k % 10) for k, m in enumerate(drawn)})
        axes.append(ax_stable)
    _finish_axes(axes, ax_pgd)
    fig.suptitle(f"{title(models[0].dataset)}: robust accuracy against eps")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw_model(ax_pgd: Any, ax_worst: Any, m: ModelEntry, color: Any) -> None:
    """One model's lines: its PGD and worst-case curves, the paper's PGD row (dotted), the strong suite (stars)."""
    source = m.results.get("curve") or m.results.get("paper")
    if source is not None:
        clean = clean_pct(source)
        tag = f"{m.name} ({source.get('suite')}, n={source.get('n')})"
        pgd = sorted(attack_curve(source, "PGD").items())
        if pgd:
            xs, ys = zip(*[(0.0, clean), *pgd], strict=True)
            ax_pgd.plot(xs, ys, color=color, marker="o", markersize=3, linewidth=1.5, label=tag)
        worst = sorted(worst_curve(source).items())
        if worst:
            xs, ys = zip(*[(0.0, clean), *worst], strict=True)
            ax_worst.plot(xs, ys, color=color, marker="s", markersize=3, linewidth=1.8, label=tag)
    paper = m.paper_row
    if paper is not None and paper["table"] == "Table 1" and paper["clean"] is not None:
        xs = [0.0, *TABLE_EPS]
        ys = [paper["clean"], *paper["pgd"]]
        ax_pgd.plot(xs, ys, color=color, linestyle=":", marker="x", markersize=4, linewidth=1.2)
    strong = m.results.get("strong")
    if strong is not None:
        points = sorted((e, v) for e, v in worst_curve(strong).items() if e <= CURVE_MAX_EPS)
        if points:
            xs, ys = zip(*points, strict=True)
            label = f"{m.name} ({strong.get('suite')}, n={strong.get('n')})"
            ax_worst.plot(xs, ys, color=color, linestyle="none", marker="*", markersize=10, label=label)


def _finish_axes(axes: Sequence[Any], ax_pgd: Any) -> None:
    """Shared eps axis, accuracy range, grid and legends; the PGD panel's legend explains the dotted paper rows."""
    from matplotlib.lines import Line2D

    for ax in axes:
        ax.set_xlabel("eps (x 1/255, l_inf)")
        ax.set_xlim(-0.5, CURVE_MAX_EPS + 0.5)
        ax.set_xticks(range(0, CURVE_MAX_EPS + 1, 2))
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="best")
    ax_pgd.set_ylabel("accuracy (%)")
    handles, labels = ax_pgd.get_legend_handles_labels()
    handles.append(Line2D([], [], color="grey", linestyle=":", marker="x"))
    labels.append("paper (Table 1)")
    ax_pgd.legend(handles, labels, fontsize=6.5, loc="best")


def _stability_points(m: ModelEntry, key: str) -> list[tuple[float, float]]:
    """(eps x 1/255, %) of ``key`` at the worst-case inputs of the model's strong result, within the plotted range."""
    return sorted((e, v) for e, v in stability_curve(m.results.get("strong"), key).items() if e <= CURVE_MAX_EPS)


def stability_models(models: Sequence[ModelEntry]) -> list[ModelEntry]:
    """The models whose strong result has the solver's statistics at its worst-case inputs (drawn in a third
    panel; without any, the figure is the two panels alone)."""
    return [m for m in models if any(_stability_points(m, key) for key, _, _ in STABILITY_COLUMNS)]


def _draw_stability(ax: Any, models: Sequence[ModelEntry], colors: dict[str, Any]) -> None:
    """The third panel: solver converged (solid) and Lyapunov certified (dashed) at the strong suite's worst-case
    inputs, against eps."""
    styles = {"solver_converged": ("-", "o"), "lyapunov_certified": ("--", "^")}
    for m in models:
        for key, label, _ in STABILITY_COLUMNS:
            points = _stability_points(m, key)
            if points:
                xs, ys = zip(*points, strict=True)
                linestyle, marker = styles.get(key, (":", "."))
                ax.plot(xs, ys, color=colors[m.name], linestyle=linestyle, marker=marker, markersize=4,
                        linewidth=1.4, label=f"{m.name}: {label}")
    ax.set_title("at the strong suite's worst-case inputs (%)")
