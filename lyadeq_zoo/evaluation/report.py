"""Text output of an evaluation result: the Markdown tables ``tools/eval.py`` prints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..attacks import eps_in_255
from .result import eps_key


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def format_table(result: Mapping[str, Any], model_name: str = "model") -> str:
    """Markdown tables: a Table-1-style row (clean | attack at each eps | worst case), then per attack
    rows with own and cumulative accuracy (and, for DEQs, the solver's statistics at the worst-case inputs
    and which attacks left the solver unconverged), then the checks."""
    lines = [*_summary_row(result, model_name), "", *_attack_rows(result), ""]
    for check in result.get("checks", []):
        failed = "FLAG" if check["level"] == "warning" else "NOTE"
        mark = {True: "PASS", False: failed, None: "n/a "}[check["passed"]]
        lines.append(f"[{mark}] {check['name']}: {check['detail']}")
    return "\n".join(lines)


def _summary_row(result: Mapping[str, Any], model_name: str) -> list[str]:
    """Header, rule and one row: clean, each all-subset attack at each eps, the worst case at each eps."""
    head = ["model", "clean"]
    row = [model_name, _pct(result["clean"]["accuracy"])]
    for attack in result["attacks"]:
        if attack["subset"] != "all" or attack["skipped"]:
            continue
        for item in attack["results"]:
            head.append(f"{attack['name']} {item['eps_255']:g}")
            row.append(_pct(item["accuracy"]))
    for item in result["worst_case"]:
        head.append(f"worst {item['eps_255']:g}")
        row.append(_pct(item["accuracy"]))
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(row) + " |"]


def _attack_rows(result: Mapping[str, Any]) -> list[str]:
    """One row per attack over every eps of the result (cumulative accuracy in parentheses), the worst
    case, and the skipped attacks with the reason."""
    eps_cols = [f"{e:g}" for e in (eps_in_255(k) for k in result["eps"])]
    lines = ["| attack (eps x255) | " + " | ".join(eps_cols) + " | seconds |", "|---|" + "---|" * (len(eps_cols) + 1)]
    for attack in result["attacks"]:
        cells = {eps_key(i["eps"]): i for i in attack["results"]}
        values = []
        for key in result["eps"]:
            item = cells.get(key)
            if item is None:
                values.append("")
            elif attack["skipped"]:
                values.append("skipped")
            elif item["accuracy"] is None:
                values.append(f"({_pct(item['cumulative_accuracy'])})")
            else:
                values.append(_pct(item["accuracy"]))
        seconds = sum(i["seconds"] or 0 for i in attack["results"])
        lines.append(f"| {attack['name']} | " + " | ".join(values) + f" | {seconds:.1f} |")
    worst = {eps_key(i["eps"]): _pct(i["accuracy"]) for i in result["worst_case"]}
    lines.append("| **worst case** | " + " | ".join(worst.get(k, "") for k in result["eps"]) + " | |")
    lines += _stability_rows(result)
    lines.append("")
    lines.append("(values in parentheses: cumulative accuracy of a 'remaining'-subset attack)")
    lines += _clean_solver_line(result)
    lines += _unconverged_line(result)
    skipped = [f"{a['name']}: {a['skipped']}" for a in result["attacks"] if a["skipped"]]
    if skipped:
        lines.append("skipped: " + "; ".join(skipped))
    return lines


def _residual(value: float | None) -> str:
    return "inf" if value is None else f"{value:.1e}"


# (key of a worst_case entry, row label, cell format), shown when the result has the key
STABILITY_ROWS = (
    ("solver_converged", "solver converged at the worst case", _pct),
    ("lyapunov_certified", "Lyapunov certified at the worst case", _pct),
)


def _stability_rows(result: Mapping[str, Any]) -> list[str]:
    """Rows under the worst case: the solver's statistics at the worst-case inputs (see
    :mod:`.under_attack`), only for results that have them."""
    entries = {eps_key(i["eps"]): i for i in result["worst_case"]}
    lines = []
    for key, label, cell in STABILITY_ROWS:
        if any(key in i for i in entries.values()):
            values = [cell(entries[k][key]) if key in entries.get(k, {}) else "" for k in result["eps"]]
            lines.append(f"| {label} | " + " | ".join(values) + " | |")
    if any("residual_max" in i for i in entries.values()):
        values = [
            f"{_residual(entries[k]['residual_median'])} / {_residual(entries[k]['residual_max'])}"
            if "residual_max" in entries.get(k, {})
            else ""
            for k in result["eps"]
        ]
        lines.append("| residual median / max at the worst case | " + " | ".join(values) + " | |")
    return lines


def _clean_solver_line(result: Mapping[str, Any]) -> list[str]:
    """The forward solver at the clean inputs: mean and max steps, converged (and certified) share."""
    solver = result["clean"].get("solver")
    if not solver or solver.get("mean_steps") is None:
        return []
    text = (
        f"solver at the clean inputs: {solver['mean_steps']:.2f} steps on average (max {solver['max_steps']:g}), "
        f"converged {_pct(solver['converged'])}%"
    )
    if "lyapunov_certified" in solver:
        text += f", Lyapunov certified {_pct(solver['lyapunov_certified'])}%"
    return [text]


def _unconverged_line(result: Mapping[str, Any]) -> list[str]:
    """Which attacks left the solver unconverged at some of their adversarial inputs, how many at which eps."""
    found = []
    for attack in result["attacks"]:
        counts = [f"{i['solver_not_converged']} at {i['eps_255']:g}" for i in attack["results"]
                  if i.get("solver_not_converged")]
        if counts:
            found.append(f"{attack['name']} ({', '.join(counts)})")
    if not found:
        return []
    return ["solver not converged at the adversarial inputs of: " + "; ".join(found)]
