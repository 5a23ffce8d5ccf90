"""Robustness curves from :func:`lyadeq_zoo.evaluation.evaluate` results (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def robustness_curve(result: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Plot accuracy (%) against eps (x 255) for one evaluation: one line per attack with its own
    accuracy (subset 'all'), dashed lines for cumulative ('remaining') attacks, and the worst case in
    bold; the clean accuracy is the point at eps 0. Writes ``path`` (PNG/PDF/SVG by suffix)."""
    plt = _pyplot()
    clean = 100 * result["clean"]["accuracy"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for attack in result["attacks"]:
        if attack.get("skipped"):
            continue
        own = attack["subset"] == "all"
        field = "accuracy" if own else "cumulative_accuracy"
        points = [(i["eps_255"], 100 * i[field]) for i in attack["results"] if i.get(field) is not None]
        if not points:
            continue
        xs, ys = zip(*[(0.0, clean), *sorted(points)], strict=True)
        label = attack["name"] if own else f"{attack['name']} (cumulative)"
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, linestyle="-" if own else "--", label=label)
    worst = sorted((i["eps_255"], 100 * i["accuracy"]) for i in result["worst_case"])
    if worst:
        xs, ys = zip(*[(0.0, clean), *worst], strict=True)
        ax.plot(xs, ys, color="black", linewidth=2.6, marker="s", markersize=4, label="worst case")
    ax.set_xlabel("eps (x 1/255, l_inf)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.set_title(
        title or f"{result.get('model', {}).get('name', 'model')} ({result.get('suite', '')}, n={result['n']})"
    )
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def compare_worst_case(
    results: Sequence[Mapping[str, Any]],
    path: str | Path,
    labels: Sequence[str] | None = None,
    title: str = "worst-case robust accuracy",
) -> Path:
    """Plot the worst-case curve of several evaluations (e.g. DEQ vs LyaDEQ) on one axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, result in enumerate(results):
        label = labels[k] if labels else result.get("model", {}).get("name", f"model {k}")
        points = sorted((i["eps_255"], 100 * i["accuracy"]) for i in result["worst_case"])
        xs, ys = zip(*[(0.0, 100 * result["clean"]["accuracy"]), *points], strict=True)
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel("eps (x 1/255, l_inf)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (parent folders created) at 120 dpi and close it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path
