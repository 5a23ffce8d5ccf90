"""The generated "where we differ from the paper" section: one list of facts per model, each with both numbers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...hub import fine_tuned_from
from ..result import attack_curve, clean_pct, eps_255_key, sample_note, worst_curve
from .entries import ModelEntry
from .formatting import DIFF_POINTS, eps_label, flagged, fmt, large_eps_point, signed

FLAT_POINTS = 1.0  # a drop from 2/255 to 8/255 below this many points counts as a flat curve


def differences(models: Sequence[ModelEntry]) -> list[str]:
    """Markdown list items: per model, where our numbers and the paper's disagree (each with both numbers)."""
    out: list[str] = []
    baseline = next((m for m in models if m.variant == "deq"), None)
    for m in models:
        ours, paper, strong = m.results.get("paper"), m.paper_row, m.results.get("strong")
        facts: list[str] = []
        if ours is not None and paper is not None:
            facts += _paper_suite_facts(ours, paper)
        elif paper is None and ours is not None:
            facts.append(
                "not in the paper: a zoo baseline to compare the DEQ models against"
                if m.baseline
                else "the paper reports no number for this model"
            )
        if strong is not None:
            facts.append(_strong_suite_fact(strong))
        schedule = _schedule_fact(m)
        if schedule:
            facts.append(schedule)
        if baseline is not None and m is not baseline:
            gain = _gain_over(m, baseline)
            if len(gain) > 1:
                facts.append(f"gain over `{baseline.name}` at 8/255 (PGD unless said): " + ", ".join(gain))
        if facts:
            out.append(f"- `{m.name}`:")
            out += [f"  - {fact[0].upper()}{fact[1:]}." for fact in facts]
    return out or ["No model of this data set has been evaluated yet."]


def _curve_shape(attack: str, paper_flat: bool, ours_flat: bool) -> str:
    if paper_flat and not ours_flat:
        return f"the paper's {attack} curve is flat"
    if paper_flat and ours_flat:
        return f"both {attack} curves are flat"
    if ours_flat:
        return f"our {attack} curve is flat while the paper's falls"
    return f"both {attack} curves fall"


def _paper_suite_facts(ours: Mapping[str, Any], paper: Mapping[str, Any]) -> list[str]:
    """Clean accuracy, the shape of the I-FGSM / PGD curves from 2/255 to 8/255, and big gaps at 8/255."""
    facts = []
    clean = clean_pct(ours)
    if paper["clean"] is not None and clean is not None:
        delta = signed(clean - paper["clean"])
        facts.append(f"clean accuracy {fmt(clean)}% vs the paper's {fmt(paper['clean'])}% ({delta})")
    for attack, key in (("PGD", "pgd"), ("I-FGSM", "ifgsm")):
        curve = attack_curve(ours, attack)
        o2, o8 = curve.get(eps_255_key(2)), curve.get(eps_255_key(8))
        p2, p8 = paper[key][0], paper[key][-1]
        if p2 is not None and p8 is not None and o2 is not None and o8 is not None:
            pd, od = p2 - p8, o2 - o8
            shape = _curve_shape(attack, pd < FLAT_POINTS, od < FLAT_POINTS)
            facts.append(
                f"{shape} from 2/255 to 8/255: paper {fmt(p2)} → {fmt(p8)} (drop {pd:.2f} points), "
                f"ours {fmt(o2)} → {fmt(o8)} (drop {od:.2f} points)"
            )
        if p8 is not None and o8 is not None and abs(o8 - p8) >= DIFF_POINTS:
            facts.append(f"{attack} at 8/255 leaves {fmt(o8)}% vs the paper's {fmt(p8)}% ({signed(o8 - p8)} points)")
    return facts


def _strong_suite_fact(strong: Mapping[str, Any]) -> str:
    """PGD vs the worst case at 8/255, the sanity radius, and the flagged masking checks of the strong suite."""
    pgd8 = attack_curve(strong, "PGD").get(eps_255_key(8))
    worst = worst_curve(strong)
    key8 = eps_255_key(8)
    n_attacks = len([a for a in strong.get("attacks") or [] if not a.get("skipped")])
    text = f"on the `{strong.get('suite')}` suite ({sample_note(strong)})"
    if pgd8 is not None and key8 in worst:
        text += (
            f" PGD at 8/255 leaves {fmt(pgd8)}% and the worst case over {n_attacks} attacks "
            f"{fmt(worst[key8])}% ({signed(worst[key8] - pgd8)} points)"
        )
    elif key8 in worst:
        text += f" the worst case at 8/255 is {fmt(worst[key8])}%"
    large = large_eps_point(strong)
    if large is not None:
        text += f"; at the sanity radius {eps_label(large[0])} the worst case is {fmt(large[1])}%"
    names = [c["name"] for c in strong.get("checks") or [] if flagged(c)]
    text += f"; masking checks flagged: {', '.join(names)}" if names else "; no masking check flagged"
    return text


def _schedule_fact(m: ModelEntry) -> str | None:
    """A shortened training schedule (and fine-tuning), or None."""
    card = m.card or {}
    paper_epochs = m.meta.get("paper_epochs")
    if card.get("epochs") is None or paper_epochs is None or int(card["epochs"]) >= int(paper_epochs):
        return None
    text = f"trained {card['epochs']} epochs instead of the paper's {m.meta['paper_epochs']}"
    init_from = fine_tuned_from(card.get("config") or {})
    if init_from:
        text += f", fine-tuned from `{init_from}` (the paper trains from scratch)"
    return text


def _gain_over(m: ModelEntry, baseline: ModelEntry) -> list[str]:
    """The model's gain over the plain DEQ at PGD 8/255: the paper's claim, ours, and the worst-case gain."""
    paper, base_paper = m.paper_row, baseline.paper_row
    gain = []
    if paper and base_paper and paper["pgd"][-1] is not None and base_paper["pgd"][-1] is not None:
        gain.append(f"paper {signed(paper['pgd'][-1] - base_paper['pgd'][-1])} (its claim)")
    o8 = attack_curve(m.results.get("paper"), "PGD").get(eps_255_key(8))
    b8 = attack_curve(baseline.results.get("paper"), "PGD").get(eps_255_key(8))
    if o8 is not None and b8 is not None:
        gain.append(f"ours {signed(o8 - b8)} (`paper` suite)")
    strong, base_strong = m.results.get("strong"), baseline.results.get("strong")
    if strong is not None and base_strong is not None:
        w, bw = worst_curve(strong).get(eps_255_key(8)), worst_curve(base_strong).get(eps_255_key(8))
        if w is not None and bw is not None:
            same_n = strong.get("n") == base_strong.get("n")
            gain.append(f"ours {signed(w - bw)} (worst case{'' if same_n else ', different n'})")
    return gain
