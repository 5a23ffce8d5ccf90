"""Numbers and labels as the results page writes them, and the page's fixed radii and thresholds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ...hub import DATASET_TITLES
from ..result import worst_curve

TABLE_EPS = (2, 4, 6, 8)  # the paper's Table 1 radii, x 1/255
DIFF_POINTS = 5.0  # |ours - paper| in accuracy points from which a number is set in bold
DASH = "–"
# (key of a worst_case entry, label, what it counts): the solver's statistics at the worst-case inputs that the
# results table and the figure show, only for results that have them (see lyadeq_zoo.evaluation.under_attack)
STABILITY_COLUMNS = (
    ("solver_converged", "solver converged", "whose forward solve reached the solver's tolerance"),
    ("lyapunov_certified", "Lyapunov certified", "whose Lyapunov decrease certificate held"),
)


def fmt(value: float | None) -> str:
    """An accuracy in % with 2 decimals, or a dash for None / NaN."""
    return DASH if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def signed(value: float) -> str:
    """A difference in points with its sign: ``+1.23``."""
    return f"{value:+.2f}"


def series(values: Sequence[float | None], paper: Sequence[float | None] | None = None) -> str:
    """``a / b / c / d`` with values beyond DIFF_POINTS from the paper's set in bold."""
    cells = []
    for i, value in enumerate(values):
        text = fmt(value)
        ref = paper[i] if paper and i < len(paper) else None
        if value is not None and ref is not None and abs(value - ref) >= DIFF_POINTS:
            text = f"**{text}**"
        cells.append(text)
    return " / ".join(cells)


def eps_label(eps_255: float) -> str:
    """``8/255`` from 8."""
    return f"{eps_255:g}/255"


def md_escape(text: str) -> str:
    """``text`` safe inside a Markdown table cell or list item (no pipe, no line break)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def title(dataset: str) -> str:
    """The data set's display name (``CIFAR-10``), or the name itself."""
    return DATASET_TITLES.get(dataset, dataset)


def large_eps_point(result: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """(eps x 1/255, worst-case %) at the result's largest eps when it is beyond the table radii."""
    curve = worst_curve(result)
    if not curve:
        return None
    top = max(curve)
    return (top, curve[top]) if top > max(TABLE_EPS) + 1e-6 else None


def flagged(check: Mapping[str, Any]) -> bool:
    """Whether a masking check raised a flag (failed at level ``warning``; failed ``info`` checks are notes)."""
    return check.get("passed") is False and check.get("level") != "info"
