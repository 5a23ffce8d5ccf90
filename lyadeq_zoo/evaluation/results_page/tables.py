"""The page's three tables per data set: results (ours vs the paper's), masking checks, training facts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ...hub import fine_tuned_from
from ..checks import CHECK_NAMES
from ..result import attack_curve, clean_pct, eps_255_key, sample_note, stability_curve, worst_curve
from ..robustbench import autoattack_point
from .entries import ModelEntry, weights_status
from .formatting import (
    DASH,
    STABILITY_COLUMNS,
    TABLE_EPS,
    eps_label,
    flagged,
    fmt,
    large_eps_point,
    md_escape,
    series,
    signed,
)


def results_table(models: Sequence[ModelEntry]) -> list[str]:
    """The per-data-set table: our row (paper suite + strong worst case, the official AutoAttack at RobustBench's
    eps and the solver's statistics at the strong worst-case inputs, each when some model's result has them),
    then the paper's row."""
    head = (
        f"| model | evaluated on | clean | I-FGSM {' / '.join(map(str, TABLE_EPS))} | "
        f"PGD {' / '.join(map(str, TABLE_EPS))} | Δ vs paper (clean; PGD 8) | "
        f"worst case {' / '.join(map(str, TABLE_EPS))} | worst case at large eps | strong suite |"
    )
    # Columns of the solver's statistics at the strong suite's worst-case inputs, only when some result has them.
    stability = [column for column in STABILITY_COLUMNS if _has_stability(models, column[0])]
    autoattack = any(autoattack_point(m.results, m.dataset) is not None for m in models)
    if autoattack:
        head += " AutoAttack (standard) |"
    head += "".join(f" {label} {' / '.join(map(str, TABLE_EPS))} |" for _, label, _ in stability)
    extra = int(autoattack) + len(stability)
    pad = " |" * extra  # the paper's rows have no such numbers
    lines = [head, "|---|---|---|---|---|---|---|---|---|" + "---|" * extra]
    for m in models:
        paper = m.paper_row
        label = f"`{m.name}`" + ("" if m.shipped else " (not shipped)")
        where, cells = _paper_suite_cells(m.results.get("paper"), paper)
        cells += _strong_suite_cells(m.results.get("strong"))
        if autoattack:
            cells.append(_autoattack_cell(m))
        cells += [_stability_series(m.results.get("strong"), key) for key, _, _ in stability]
        lines.append(f"| {label} | {where} | " + " | ".join(cells) + " |")
        if paper is not None:
            lines.append(
                f"| ↳ paper ({paper['table']}) | reported | {fmt(paper['clean'])} | {series(paper['ifgsm'])} | "
                f"{series(paper['pgd'])} | | | | |" + pad
            )
        elif m.baseline:
            lines.append("| ↳ paper | not in the paper: a zoo baseline | | | | | | | |" + pad)
        else:
            lines.append("| ↳ paper | not reported for this data set | | | | | | | |" + pad)
    if autoattack:
        lines += [
            "",
            "AutoAttack (standard): the official AutoAttack (pyautoattack; APGD-CE, APGD-T, FAB-T, Square 5000) at "
            "RobustBench's eps for the data set, alone, on the n images stated: the number RobustBench compares. The "
            "worst case over every attack is the stricter one.",
        ]
    if stability:
        meanings = "; ".join(f"{label}: % of the strong suite's images {meaning}" for _, label, meaning in stability)
        lines += [
            "",
            f"{meanings}; each at the image's worst-case input (the example of the first attack that broke it at that "
            "eps or a smaller one, else of the last attack that ran on it; see `lz.evaluation.under_attack`).",
        ]
    return lines


def _autoattack_cell(m: ModelEntry) -> str:
    """``0.00 at 8/255 (n=500)``: the standard AutoAttack's accuracy at RobustBench's eps, or a dash."""
    point = autoattack_point(m.results, m.dataset)
    if point is None:
        return DASH
    accuracy, n, eps = point
    return f"{fmt(accuracy)} at {eps_label(eps * 255)} (n={n})"


def _has_stability(models: Sequence[ModelEntry], key: str) -> bool:
    """Whether some model's strong result holds ``key`` in a worst-case entry."""
    return any(key in item for m in models for item in (m.results.get("strong") or {}).get("worst_case") or [])


def _stability_series(strong: Mapping | None, key: str) -> str:
    """``a / b / c / d``: the strong result's ``key`` (a fraction of the images) in % at the table radii, then
    ``; e at 76.5/255`` at its largest eps when that is beyond them (the sanity radius)."""
    curve = stability_curve(strong, key)
    if not curve:
        return DASH
    text = series([curve.get(eps_255_key(e)) for e in TABLE_EPS])
    top = max(curve)
    return text + (f"; {fmt(curve[top])} at {eps_label(top)}" if top > max(TABLE_EPS) + 1e-6 else "")


def _paper_suite_cells(ours: Mapping | None, paper: Mapping | None) -> tuple[str, list[str]]:
    """The "evaluated on" text and the clean / I-FGSM / PGD / Δ cells of our paper-suite result."""
    if ours is None:
        return "**not evaluated**", [DASH, DASH, DASH, DASH]
    ifgsm_c, pgd_c = attack_curve(ours, "I-FGSM"), attack_curve(ours, "PGD")
    ifgsm = [ifgsm_c.get(eps_255_key(e)) for e in TABLE_EPS]
    pgd = [pgd_c.get(eps_255_key(e)) for e in TABLE_EPS]
    clean = clean_pct(ours)
    where = f"`{ours.get('suite')}` suite, {sample_note(ours)}"
    delta = []
    if paper and paper["clean"] is not None and clean is not None:
        delta.append(f"clean {signed(clean - paper['clean'])}")
    if paper and paper["pgd"][-1] is not None and pgd[-1] is not None:
        delta.append(f"PGD 8 {signed(pgd[-1] - paper['pgd'][-1])}")
    clean_text = fmt(clean)
    if paper and paper["clean"] is not None and clean is not None:
        clean_text = series([clean], [paper["clean"]])
    return where, [
        clean_text,
        series(ifgsm, paper["ifgsm"] if paper else None),
        series(pgd, paper["pgd"] if paper else None),
        "; ".join(delta) or DASH,
    ]


def _strong_suite_cells(strong: Mapping | None) -> list[str]:
    """The worst case at the table radii, at the large eps, and which strong suite on how many images."""
    if strong is None:
        return [DASH, DASH, "not evaluated"]
    worst = worst_curve(strong)
    large = large_eps_point(strong)
    return [
        series([worst.get(eps_255_key(e)) for e in TABLE_EPS]),
        f"{fmt(large[1])} at {eps_label(large[0])}" if large else DASH,
        f"`{strong.get('suite')}`, {sample_note(strong)}",
    ]


def _verdict(check: Mapping | None) -> str:
    if check is None:
        return DASH
    if check["passed"] is None:
        return "n/a"
    if check["passed"]:
        return "pass"
    return "note" if check.get("level") == "info" else "**FLAG**"


def checks_table(models: Sequence[ModelEntry]) -> list[str]:
    """Masking-check verdicts per model (from the strong JSON, else the paper JSON), then the flags' details."""
    evaluated = [(m, m.results.get("strong") or m.results.get("paper")) for m in models]
    evaluated = [(m, r) for m, r in evaluated if r is not None]
    if not evaluated:
        return ["No model of this data set has been evaluated, so no masking check has run."]
    short = {name: name.replace("_", " ") for name in CHECK_NAMES}
    lines = [
        "| model | suite | " + " | ".join(short[c] for c in CHECK_NAMES) + " |",
        "|---|---|" + "---|" * len(CHECK_NAMES),
    ]
    details = []
    for m, result in evaluated:
        checks = result.get("checks") or []
        by_name = {c["name"]: c for c in checks}
        cells = [_verdict(by_name.get(name)) for name in CHECK_NAMES]
        lines.append(f"| `{m.name}` | `{result.get('suite')}` ({sample_note(result)}) | " + " | ".join(cells) + " |")
        for check in checks:
            if flagged(check):
                details.append(f"- `{m.name}`, **{check['name']}**: {md_escape(check['detail'])}")
        for check in [c for c in checks if c["passed"] is False and c.get("level") == "info"]:
            first = check["detail"].split("). ")[0] + (")" if "). " in check["detail"] else "")
            details.append(f"- `{m.name}`, {check['name']} (note): {md_escape(first)}.")
        skipped = [c["name"] for c in checks if c["passed"] is None]
        if skipped:
            details.append(f"- `{m.name}`: not applicable with this suite: {', '.join(skipped)}.")
    lines += [
        "",
        "pass: no sign of gradient masking; **FLAG**: a sign that the white-box numbers overstate robustness; "
        "n/a: the suite lacks what the check needs; note: informational (see `lz.evaluation.masking_checks`). "
        "A `dynamic_defense` note means the forward pass calls autograd (AutoAttack's flag): the Lyapunov projection "
        "needs grad V(z). The zoo's `icnn` module keeps grad V in the autograd graph (an explicit backward through "
        "the ICNN by default, or `create_graph=True`), so attacks differentiate through the projection.",
        "",
        *details,
    ]
    return lines


def training_table(models: Sequence[ModelEntry]) -> list[str]:
    """Epochs run vs the paper's, schedule, clean accuracy at the end of training, weights evaluated."""
    lines = [
        "| model | shipped | epochs run | paper epochs | schedule | clean acc. after training | weights evaluated |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in models:
        paper_epochs = m.meta.get("paper_epochs")
        card = m.card or {}
        epochs = card.get("epochs")
        if not m.shipped:
            schedule = DASH
        elif epochs is None or paper_epochs is None:
            schedule = "unknown"
        elif int(epochs) < int(paper_epochs):
            schedule = f"**shortened** (CPU budget): {epochs} of {paper_epochs} epochs"
        else:
            schedule = "the paper's"
        init_from = fine_tuned_from(card.get("config") or {})
        if m.shipped and init_from:
            schedule += f"; **fine-tuned** from `{init_from}`, not trained from scratch"
        metrics = card.get("metrics") or {}
        train_metrics = metrics.get("training", metrics) if isinstance(metrics, Mapping) else {}
        train_clean = train_metrics.get("clean_accuracy") if isinstance(train_metrics, Mapping) else None
        train_clean_text = f"{100 * train_clean:.2f}" if isinstance(train_clean, (int, float)) else DASH
        sources = [weights_status(m, r)[1] for r in m.results.values()]
        lines.append(
            f"| `{m.name}` | {'yes' if m.shipped else 'no'} | {epochs if epochs is not None else DASH} | "
            f"{paper_epochs if paper_epochs is not None else DASH} | {schedule} | {train_clean_text} | "
            f"{'; '.join(sorted(set(sources))) or DASH} |"
        )
    return lines
