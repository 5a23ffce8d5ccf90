#!/usr/bin/env python
"""Build the zoo's results page from evaluation JSONs: ``python tools/results_page.py [options]``.

    python tools/results_page.py                                  # runs/eval -> docs/results.md + docs/figures/
    python tools/results_page.py --runs runs/eval --out docs/results.md --figures docs/figures
    python tools/results_page.py --update-cards                   # also put the numbers into the shipped cards

Reads ``RUNS/<zoo_name>_<suite>.json`` as written by ``tools/eval.py --json`` for the suites ``paper``
(the paper's protocol, meant for the full test set), ``strong`` (``strong`` / ``strong_cpu`` on a subset)
and ``curve`` (``configs/eval/curve.yaml``, eps 2..20 /255). Missing files are fine: such a model's row
says "not evaluated"; no number on the page comes from anywhere but these files, the shipped models'
``config.json`` and the paper's numbers recorded in each zoo config's ``meta``.

The page holds, per data set, a table of our numbers with the paper's row below each model, the
gradient-masking checks, the training facts, one robustness-curve figure, a generated "where we differ
from the paper" section and the commands that reproduce everything.

``--update-cards`` rewrites ``config.json`` (metrics) and ``README.md`` (model card) of every shipped model
that has eval JSONs, through ``lz.save_pretrained``; the weights file is never rewritten (the tool checks
that ``save_pretrained`` would give the same bytes, and its sha256 before and after), and the registry's
sha256 is touched only if the weights file changed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script from a checkout: make the checkout's package importable
    sys.path.insert(0, str(REPO))

# suite slot -> file suffixes tried, in order (RUNS/<name>_<suffix>.json)
SUITE_FILES: dict[str, tuple[str, ...]] = {"paper": ("paper",), "strong": ("strong", "strong_cpu"), "curve": ("curve",)}
TABLE_EPS = (2, 4, 6, 8)  # the paper's Table 1 radii, x 1/255
CURVE_MAX_EPS = 20  # the paper's Figure 4 range, x 1/255
DIFF_POINTS = 5.0  # |ours - paper| in accuracy points from which a number is set in bold
FLAT_POINTS = 1.0  # a drop from 2/255 to 8/255 below this many points counts as a flat curve
DATASET_ORDER = ("mnist", "cifar10", "svhn", "cifar100")
VARIANT_ORDER = ("deq", "deq_orth", "lyadeq_no_orth", "lyadeq", "lyadeq_pgdat", "lyadeq_trades")
CHECK_ORDER = (
    "input_gradients",
    "large_eps",
    "monotone_eps",
    "flat_curve",
    "more_iterations",
    "single_step",
    "score_based",
    "transfer",
    "alternative_backward",
    "dynamic_defense",
)
EVAL_FORMAT_PREFIX = "lyadeq-zoo-eval/"
DASH = "–"


# -- data model --------------------------------------------------------------------------------------
@dataclass
class ModelEntry:
    """One zoo model: its config facts, shipped checkpoint (if any) and eval results by suite slot."""

    name: str
    dataset: str
    variant: str
    meta: dict[str, Any]
    train: dict[str, Any]
    shipped_dir: Path | None = None
    registry_sha256: str | None = None
    card: dict[str, Any] | None = None  # the shipped config.json
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # slot -> lz.evaluate result
    files: dict[str, Path] = field(default_factory=dict)  # slot -> JSON path

    @property
    def shipped(self) -> bool:
        return self.shipped_dir is not None

    @property
    def paper_row(self) -> dict[str, Any] | None:
        """``{"clean", "ifgsm": [4], "pgd": [4]}`` (Table 1), ``{"ifgsm8", "pgd8"}`` (Table 2) or None."""
        t1 = self.meta.get("paper_table1")
        if isinstance(t1, Mapping):
            return {
                "table": "Table 1",
                "clean": t1.get("clean"),
                "ifgsm": list(t1.get("ifgsm") or []),
                "pgd": list(t1.get("pgd") or []),
            }
        t2 = self.meta.get("paper_table2")
        if isinstance(t2, Mapping):
            none3 = [None, None, None]
            return {
                "table": "Table 2",
                "clean": None,
                "ifgsm": [*none3, t2.get("ifgsm_8_255")],
                "pgd": [*none3, t2.get("pgd_8_255")],
            }
        return None


def shipped_folder(local_path: str) -> Path:
    """Where a registry entry's ``local_path`` points (relative paths: next to the shipped registry,
    as :mod:`lyadeq_zoo.hub` resolves them)."""
    from lyadeq_zoo import hub

    path = Path(local_path).expanduser()
    return path if path.is_absolute() else hub.REGISTRY_PATH.parent / path


def collect_models(runs_dir: Path, problems: list[str]) -> list[ModelEntry]:
    """Every config-backed zoo model with its shipped checkpoint and the eval JSONs found in ``runs_dir``."""
    import lyadeq_zoo as lz
    from lyadeq_zoo import hub
    from lyadeq_zoo.factory import zoo_config_path

    registry = hub.read_registry()
    entries = []
    for name in lz.list_models():
        try:
            path = zoo_config_path(name)
            config = lz.zoo_config(name)
        except Exception as err:  # a broken plugin config must not stop the page
            problems.append(f"`{name}`: config not readable ({err})")
            continue
        entry = ModelEntry(
            name=name,
            dataset=path.parent.name,
            variant=path.stem,
            meta=dict(config.get("meta") or {}),
            train=dict(config.get("train") or {}),
        )
        if name in registry:
            reg = registry[name]
            entry.registry_sha256 = reg.get("sha256")
            if reg.get("local_path"):
                folder = shipped_folder(reg["local_path"])
                entry.shipped_dir = folder
                try:
                    entry.card = hub.read_checkpoint_config(folder / hub.CONFIG_NAME)
                except hub.CheckpointError as err:
                    problems.append(f"`{name}`: shipped config.json not readable ({err})")
        for slot, suffixes in SUITE_FILES.items():
            for suffix in suffixes:
                file = runs_dir / f"{name}_{suffix}.json"
                if not file.is_file():
                    continue
                try:
                    result = json.loads(file.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError) as err:
                    problems.append(f"`{file}`: not readable JSON ({err}); ignored")
                    continue
                if not isinstance(result, dict) or not str(result.get("format", "")).startswith(EVAL_FORMAT_PREFIX):
                    problems.append(f"`{file}`: not an lz.evaluate result (no format {EVAL_FORMAT_PREFIX}*); ignored")
                    continue
                entry.results[slot] = result
                entry.files[slot] = file
                break
        entries.append(entry)
    rank = {v: i for i, v in enumerate(VARIANT_ORDER)}
    entries.sort(key=lambda e: (_dataset_rank(e.dataset), rank.get(e.variant, len(rank)), e.variant))
    return entries


def _dataset_rank(dataset: str) -> tuple[int, str]:
    return (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER), dataset)


# -- reading results ---------------------------------------------------------------------------------
def _key(eps_255: float) -> float:
    return round(float(eps_255), 3)


def attack_curve(result: Mapping[str, Any] | None, name: str) -> dict[float, float]:
    """eps (x 1/255) -> the attack's own accuracy in %, for attack ``name`` of ``result`` ({} if absent)."""
    if not result:
        return {}
    for attack in result.get("attacks") or []:
        if attack.get("name") == name and attack.get("subset") == "all" and not attack.get("skipped"):
            return {
                _key(i["eps_255"]): 100.0 * i["accuracy"] for i in attack["results"] if i.get("accuracy") is not None
            }
    return {}


def worst_curve(result: Mapping[str, Any] | None) -> dict[float, float]:
    """eps (x 1/255) -> worst-case accuracy in % over every attack of ``result`` at that eps."""
    if not result:
        return {}
    return {_key(i["eps_255"]): 100.0 * i["accuracy"] for i in result.get("worst_case") or []}


def clean_pct(result: Mapping[str, Any] | None) -> float | None:
    if not result:
        return None
    return 100.0 * result["clean"]["accuracy"]


def sample_note(result: Mapping[str, Any]) -> str:
    """How many samples a result is on, and from where (full test set, first N, shipped sample)."""
    data = result.get("data") or {}
    n = result.get("n")
    if str(data.get("root")) == "sample":
        return f"n={n}, shipped sample"
    if data.get("limit"):
        return f"n={n}, first {data['limit']} test images"
    if data:
        return f"n={n}, full test set"
    return f"n={n}"


def weights_status(entry: ModelEntry, result: Mapping[str, Any]) -> tuple[str, str]:
    """Whether ``result`` was computed on the shipped weights: ``(status, text)`` with status ``shipped``
    (zoo name, pretrained), ``same`` / ``other`` (sha256 of the evaluated folder vs the registry's),
    ``unchecked`` (folder not found here), ``random`` or ``unknown``."""
    from lyadeq_zoo import hub

    model = result.get("model") or {}
    name, weights = str(model.get("name", "")), model.get("weights")
    if name == entry.name and weights == "pretrained":
        return "shipped", "shipped weights (zoo name)"
    if weights == "random":
        return "random", f"`{name}`: **random weights**"
    if name.startswith(hub.LOCAL_PREFIX):
        raw = Path(name[len(hub.LOCAL_PREFIX) :]).expanduser()
        for folder in [raw] if raw.is_absolute() else [REPO / raw, Path.cwd() / raw]:
            file = folder / hub.WEIGHTS_NAME
            if file.is_file():
                if entry.registry_sha256 is None:
                    return "unchecked", f"`{name}` (model not shipped)"
                if hub.sha256_file(file) == entry.registry_sha256:
                    return "same", f"`{name}`: same sha256 as shipped"
                return "other", f"`{name}`: **other weights than shipped**"
        return "unchecked", f"`{name}` (folder not found here: not checked against the shipped weights)"
    return "unknown", f"`{name or '?'}` ({weights or 'unknown weights'})"


def large_eps_point(result: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """(eps x 1/255, worst-case %) at the result's largest eps when it is beyond the table radii."""
    curve = worst_curve(result)
    if not curve:
        return None
    top = max(curve)
    return (top, curve[top]) if top > max(TABLE_EPS) + 1e-6 else None


# -- formatting --------------------------------------------------------------------------------------
def fmt(value: float | None) -> str:
    return DASH if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def signed(value: float) -> str:
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
    return f"{eps_255:g}/255"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# -- page sections -----------------------------------------------------------------------------------
def results_table(models: Sequence[ModelEntry]) -> list[str]:
    """The per-data-set table: our row (paper suite + strong worst case), then the paper's row."""
    head = (
        f"| model | evaluated on | clean | I-FGSM {' / '.join(map(str, TABLE_EPS))} | "
        f"PGD {' / '.join(map(str, TABLE_EPS))} | Δ vs paper (clean; PGD 8) | "
        f"worst case {' / '.join(map(str, TABLE_EPS))} | worst case at large eps | strong suite |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        paper = m.paper_row
        ours = m.results.get("paper")
        strong = m.results.get("strong")
        label = f"`{m.name}`" + ("" if m.shipped else " (not shipped)")
        if ours is not None:
            ifgsm_c, pgd_c = attack_curve(ours, "I-FGSM"), attack_curve(ours, "PGD")
            ifgsm = [ifgsm_c.get(_key(e)) for e in TABLE_EPS]
            pgd = [pgd_c.get(_key(e)) for e in TABLE_EPS]
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
            cells = [
                clean_text,
                series(ifgsm, paper["ifgsm"] if paper else None),
                series(pgd, paper["pgd"] if paper else None),
                "; ".join(delta) or DASH,
            ]
        else:
            where = "**not evaluated**"
            cells = [DASH, DASH, DASH, DASH]
        if strong is not None:
            worst = worst_curve(strong)
            large = large_eps_point(strong)
            cells += [
                series([worst.get(_key(e)) for e in TABLE_EPS]),
                f"{fmt(large[1])} at {eps_label(large[0])}" if large else DASH,
                f"`{strong.get('suite')}`, {sample_note(strong)}",
            ]
        else:
            cells += [DASH, DASH, "not evaluated"]
        lines.append(f"| {label} | {where} | " + " | ".join(cells) + " |")
        if paper is not None:
            lines.append(
                f"| ↳ paper ({paper['table']}) | reported | {fmt(paper['clean'])} | {series(paper['ifgsm'])} | "
                f"{series(paper['pgd'])} | | | | |"
            )
        else:
            lines.append("| ↳ paper | not reported for this data set | | | | | | | |")
    return lines


def _flagged(check: Mapping[str, Any]) -> bool:
    return check.get("passed") is False and check.get("level") != "info"


def checks_table(models: Sequence[ModelEntry]) -> list[str]:
    """Masking-check verdicts per model (from the strong JSON, else the paper JSON), then the flags' details."""
    evaluated = [(m, m.results.get("strong") or m.results.get("paper")) for m in models]
    evaluated = [(m, r) for m, r in evaluated if r is not None]
    if not evaluated:
        return ["No model of this data set has been evaluated, so no masking check has run."]
    short = {name: name.replace("_", " ") for name in CHECK_ORDER}
    lines = [
        "| model | suite | " + " | ".join(short[c] for c in CHECK_ORDER) + " |",
        "|---|---|" + "---|" * len(CHECK_ORDER),
    ]
    details = []
    for m, result in evaluated:
        by_name = {c["name"]: c for c in result.get("checks") or []}
        cells = []
        for name in CHECK_ORDER:
            check = by_name.get(name)
            if check is None:
                cells.append(DASH)
            elif check["passed"] is None:
                cells.append("n/a")
            elif check["passed"]:
                cells.append("pass")
            elif check.get("level") == "info":
                cells.append("note")
            else:
                cells.append("**FLAG**")
        lines.append(f"| `{m.name}` | `{result.get('suite')}` ({sample_note(result)}) | " + " | ".join(cells) + " |")
        for check in result.get("checks") or []:
            if _flagged(check):
                details.append(f"- `{m.name}`, **{check['name']}**: {_md_escape(check['detail'])}")
        notes = [c for c in result.get("checks") or [] if c["passed"] is False and c.get("level") == "info"]
        for check in notes:
            first = check["detail"].split("). ")[0] + (")" if "). " in check["detail"] else "")
            details.append(f"- `{m.name}`, {check['name']} (note): {_md_escape(first)}.")
        skipped = [c["name"] for c in result.get("checks") or [] if c["passed"] is None]
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
    from lyadeq_zoo.hub import fine_tuned_from

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


def differences(models: Sequence[ModelEntry]) -> list[str]:
    """Generated statements where our numbers and the paper's disagree (each with both numbers)."""
    from lyadeq_zoo.hub import fine_tuned_from

    out: list[str] = []
    baseline = next((m for m in models if m.variant == "deq"), None)
    for m in models:
        ours, paper, strong = m.results.get("paper"), m.paper_row, m.results.get("strong")
        facts: list[str] = []
        if ours is not None and paper is not None:
            clean = clean_pct(ours)
            if paper["clean"] is not None and clean is not None:
                delta = signed(clean - paper["clean"])
                facts.append(f"clean accuracy {fmt(clean)}% vs the paper's {fmt(paper['clean'])}% ({delta})")
            for attack, key in (("PGD", "pgd"), ("I-FGSM", "ifgsm")):
                curve = attack_curve(ours, attack)
                o2, o8 = curve.get(_key(2)), curve.get(_key(8))
                p2, p8 = paper[key][0], paper[key][-1]
                if p2 is not None and p8 is not None and o2 is not None and o8 is not None:
                    pd, od = p2 - p8, o2 - o8
                    paper_flat, ours_flat = pd < FLAT_POINTS, od < FLAT_POINTS
                    shape = (
                        f"the paper's {attack} curve is flat"
                        if paper_flat and not ours_flat
                        else f"both {attack} curves are flat"
                        if paper_flat and ours_flat
                        else f"our {attack} curve is flat while the paper's falls"
                        if ours_flat
                        else f"both {attack} curves fall"
                    )
                    facts.append(
                        f"{shape} from 2/255 to 8/255: paper {fmt(p2)} → {fmt(p8)} (drop {pd:.2f} points), "
                        f"ours {fmt(o2)} → {fmt(o8)} (drop {od:.2f} points)"
                    )
                if p8 is not None and o8 is not None and abs(o8 - p8) >= DIFF_POINTS:
                    facts.append(
                        f"{attack} at 8/255 leaves {fmt(o8)}% vs the paper's {fmt(p8)}% ({signed(o8 - p8)} points)"
                    )
        elif paper is None and ours is not None:
            facts.append("the paper reports no number for this model")
        if strong is not None:
            pgd8 = attack_curve(strong, "PGD").get(_key(8))
            worst = worst_curve(strong)
            n_attacks = len([a for a in strong.get("attacks") or [] if not a.get("skipped")])
            text = f"on the `{strong.get('suite')}` suite ({sample_note(strong)})"
            if pgd8 is not None and _key(8) in worst:
                text += (
                    f" PGD at 8/255 leaves {fmt(pgd8)}% and the worst case over {n_attacks} attacks "
                    f"{fmt(worst[_key(8)])}% ({signed(worst[_key(8)] - pgd8)} points)"
                )
            elif _key(8) in worst:
                text += f" the worst case at 8/255 is {fmt(worst[_key(8)])}%"
            large = large_eps_point(strong)
            if large is not None:
                text += f"; at the sanity radius {eps_label(large[0])} the worst case is {fmt(large[1])}%"
            flagged = [c["name"] for c in strong.get("checks") or [] if _flagged(c)]
            text += f"; masking checks flagged: {', '.join(flagged)}" if flagged else "; no masking check flagged"
            facts.append(text)
        card = m.card or {}
        paper_epochs = m.meta.get("paper_epochs")
        if card.get("epochs") is not None and paper_epochs is not None and int(card["epochs"]) < int(paper_epochs):
            text = f"trained {card['epochs']} epochs instead of the paper's {m.meta['paper_epochs']}"
            init_from = fine_tuned_from(card.get("config") or {})
            if init_from:
                text += f", fine-tuned from `{init_from}` (the paper trains from scratch)"
            facts.append(text)
        if baseline is not None and m is not baseline:
            base_paper, base_ours = baseline.paper_row, baseline.results.get("paper")
            gain = []
            if paper and base_paper and paper["pgd"][-1] is not None and base_paper["pgd"][-1] is not None:
                gain.append(f"paper {signed(paper['pgd'][-1] - base_paper['pgd'][-1])} (its claim)")
            o8 = attack_curve(ours, "PGD").get(_key(8))
            b8 = attack_curve(base_ours, "PGD").get(_key(8))
            if o8 is not None and b8 is not None:
                gain.append(f"ours {signed(o8 - b8)} (`paper` suite)")
            base_strong = baseline.results.get("strong")
            if strong is not None and base_strong is not None:
                w, bw = worst_curve(strong).get(_key(8)), worst_curve(base_strong).get(_key(8))
                if w is not None and bw is not None:
                    same_n = strong.get("n") == base_strong.get("n")
                    gain.append(f"ours {signed(w - bw)} (worst case{'' if same_n else ', different n'})")
            if len(gain) > 1:
                facts.append(f"gain over `{baseline.name}` at 8/255 (PGD unless said): " + ", ".join(gain))
        if facts:
            out.append(f"- `{m.name}`:")
            out += [f"  - {fact[0].upper()}{fact[1:]}." for fact in facts]
    return out or ["No model of this data set has been evaluated yet."]


def reproduce_section(models: Sequence[ModelEntry], args: argparse.Namespace) -> list[str]:
    """The exact commands: training (as recorded in each shipped config.json), evaluation, this page."""
    data_dir = "../shared/data"
    lines = [
        "## How to reproduce",
        "",
        "Run from the repository root with the project's virtual environment; `../shared/data` holds the full "
        "MNIST and CIFAR-10 copies (any folder in that layout works, see `lyadeq_zoo/data/datasets.py`). "
        "`runs/` is not committed. The recorded training commands below are the ones that produced the "
        "shipped weights (taken from each shipped `config.json`); the data folder is given there as it was "
        "on the training machine.",
        "",
    ]
    for dataset in sorted({m.dataset for m in models}, key=_dataset_rank):
        group = [m for m in models if m.dataset == dataset]
        if not any(m.shipped or m.results for m in group):
            continue
        lines += [f"### {_title(dataset)}", "", "```bash"]
        for m in group:
            if not (m.shipped or m.results):
                continue
            card = m.card or {}
            lines.append(f"# {m.name}")
            recorded = card.get("train_command")
            if recorded:
                lines.append(f"{recorded}  # recorded")
            else:
                lines.append(
                    f"python tools/train.py {m.name} --out runs/zoo/{m.name} --data-dir {data_dir} "
                    "train.final_eval=null"
                )
            if not m.shipped:
                lines.append(f"python tools/publish.py {m.name} runs/zoo/{m.name}/final --ship")
            for slot, suite_default, limit_default in (
                ("paper", "paper", None),
                ("strong", "strong_cpu", 500),
                ("curve", "curve", 500),
            ):
                result = m.results.get(slot)
                suite = (result or {}).get("suite") or suite_default
                limit = ((result or {}).get("data") or {}).get("limit") if result else limit_default
                seed = (result or {}).get("seed")
                on_sample = str(((result or {}).get("data") or {}).get("root")) == "sample"
                where = "" if on_sample else f" --data-dir {data_dir}"  # no --data-dir: the shipped sample
                command = (
                    f"python tools/eval.py {m.name} --pretrained{where} --suite {suite}"
                    + (f" --limit {limit}" if limit else "")
                    + (f" --seed {seed}" if seed else "")
                    + f" --json {args.runs}/{m.name}_{slot}.json --plot {args.runs}/{m.name}_{slot}.png"
                )
                lines.append(command + ("" if result else "  # not run yet"))
            lines.append("")
        if lines[-1] == "":
            lines.pop()
        lines += ["```", ""]
    lines += [
        "Then this page and the model cards:",
        "",
        "```bash",
        f"python tools/results_page.py --runs {args.runs} --out {args.out} --figures {args.figures} --update-cards",
        "```",
        "",
        "Add `--threads 1` and `OMP_NUM_THREADS=1` on a shared CPU; `--device cuda` uses a GPU. Evaluations are "
        "deterministic for a given `--seed` on the same device.",
    ]
    return lines


def _title(dataset: str) -> str:
    from lyadeq_zoo.hub import DATASET_TITLES

    return DATASET_TITLES.get(dataset, dataset)


# -- figures -----------------------------------------------------------------------------------------
def curve_figure(models: Sequence[ModelEntry], path: Path) -> Path | None:
    """One PNG per data set: left, PGD accuracy against eps (ours solid, the paper's Table 1 dotted);
    right, our worst case over the suite's attacks, with the strong suite's worst case as stars.
    Our curves come from the ``curve`` JSON (eps 0..20/255), else the ``paper`` JSON (0..8/255); eps 0 is
    the clean accuracy. Returns None (no file) when no model of the data set has a result."""
    from matplotlib.lines import Line2D

    from lyadeq_zoo.plotting import _pyplot

    drawn = [m for m in models if m.results.get("curve") or m.results.get("paper") or m.results.get("strong")]
    if not drawn:
        return None
    plt = _pyplot()
    fig, (ax_pgd, ax_worst) = plt.subplots(1, 2, figsize=(11.5, 4.4), sharey=True)
    colors = plt.get_cmap("tab10")
    for k, m in enumerate(drawn):
        color = colors(k % 10)
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
                ax_worst.plot(
                    xs,
                    ys,
                    color=color,
                    linestyle="none",
                    marker="*",
                    markersize=10,
                    label=f"{m.name} ({strong.get('suite')}, n={strong.get('n')})",
                )
    ax_pgd.set_title("PGD (paper schedule); dotted: the paper's Table 1")
    ax_worst.set_title("worst case over attacks; stars: strong suite")
    for ax in (ax_pgd, ax_worst):
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
    fig.suptitle(f"{_title(models[0].dataset)}: robust accuracy against eps")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the page ----------------------------------------------------------------------------------------
def build_page(models: Sequence[ModelEntry], args: argparse.Namespace, problems: Sequence[str]) -> str:
    """The markdown page; writes the figures under ``args.figures`` as a side effect."""
    from lyadeq_zoo.version import __version__

    out_dir = Path(args.out).parent
    lines = [
        "# Results",
        "",
        f"<!-- generated by tools/results_page.py (lyadeq-zoo {__version__}); edit the tool, not this page -->",
        "",
        "Clean and adversarial accuracy (%) of the zoo's models on the test split, next to the numbers the LyaDEQ "
        "paper reports (Chu et al., AAAI 2024; Table 1, and Table 2 for adversarial training). All attacks are "
        "white-box l_inf unless named otherwise, on images in [0, 1]; every accuracy divides by all evaluated "
        "images (clean mistakes count as non-robust).",
        "",
        "- **I-FGSM / PGD 2/4/6/8**: the `paper` suite (`configs/eval/paper.yaml`: the paper's step 1/255 and "
        "step counts, last iterate), our numbers on the number of images stated (`n`).",
        "- **worst case**: per image, robust only if every attack of the `strong` suite failed (RobustBench's "
        "number), on the subset stated; **large eps** is the sanity radius where an honestly evaluated model "
        "should fall to ~0%.",
        f"- Our numbers that differ from the paper's by {DIFF_POINTS:g} points or more are in **bold**; Δ is ours "
        "minus the paper's. The paper's white-box numbers that barely move with eps are the signature of gradient "
        'masking (see `PAPER.md`, "Read with care"), so a lower number here is not necessarily a worse model.',
        "",
    ]
    if problems:
        lines += ["**Problems while reading the inputs:**", "", *[f"- {p}" for p in problems], ""]
    datasets = sorted({m.dataset for m in models}, key=_dataset_rank)
    idle = []
    for dataset in datasets:
        group = [m for m in models if m.dataset == dataset]
        if not any(m.shipped or m.results for m in group):
            idle.append(dataset)
            continue
        lines += [f"## {_title(dataset)}", "", *results_table(group), ""]
        figure = curve_figure(group, Path(args.figures) / f"robustness_{dataset}.png")
        if figure is not None:
            rel = os.path.relpath(figure, out_dir).replace(os.sep, "/")
            lines += [f"![{_title(dataset)} robustness curves]({rel})", ""]
            lines += [
                "Left: PGD with the paper's schedule (solid: ours; dotted: the paper's Table 1, which stops at "
                "8/255). Right: worst case over the attacks of the curve suite (I-FGSM, PGD, PGD-CW-20) or, "
                "without a curve result, of the paper suite; stars: the strong suite's worst case. eps 0 is the "
                "clean accuracy.",
                "",
            ]
        lines += [f"### Masking checks ({_title(dataset)})", "", *checks_table(group), ""]
        lines += [f"### Training ({_title(dataset)})", "", *training_table(group), ""]
        lines += [f"### Where we differ from the paper ({_title(dataset)})", "", *differences(group), ""]
    if idle:
        names = ", ".join(_title(d) for d in idle)
        lines += [
            "## Not evaluated",
            "",
            f"{names}: no model of these data sets is shipped or has an eval JSON in `{args.runs}` yet (SVHN and "
            "CIFAR-100 have no copy in `../shared/data`). The paper's numbers are in each zoo config's `meta` and in "
            "`PAPER.md`.",
            "",
        ]
    lines += reproduce_section(models, args)
    return "\n".join(lines).rstrip() + "\n"


# -- model cards -------------------------------------------------------------------------------------
def card_metrics(entry: ModelEntry) -> dict[str, Any]:
    """The metrics to store in a shipped model's config.json: the primary eval result (``paper``, else
    ``strong``, else ``curve``) at the top (the card renders it), the other results nested under their
    slot, the strong suite's worst case as extra top-level rows (in %), and the training metrics under
    ``training``."""
    order = [s for s in ("paper", "strong", "curve") if s in entry.results]
    primary = order[0]
    metrics = copy.deepcopy(entry.results[primary])
    for slot in order[1:]:
        metrics[slot] = copy.deepcopy(entry.results[slot])
    strong = entry.results.get("strong")
    if strong is not None and primary != "strong":
        for eps, value in sorted(worst_curve(strong).items()):
            metrics[f"worst case, {strong.get('suite')} suite (n={strong.get('n')}) @ eps {eps:g}/255 (%)"] = value
    old = (entry.card or {}).get("metrics") or {}
    training = old.get("training") if str(old.get("format", "")).startswith(EVAL_FORMAT_PREFIX) else old
    if training:
        metrics["training"] = copy.deepcopy(training)
    return metrics


def update_card(entry: ModelEntry) -> str:
    """Rewrite ``config.json`` and ``README.md`` of ``entry``'s shipped folder with its eval results.

    The model is loaded strictly from the folder and re-saved with ``lz.save_pretrained`` into a temporary
    folder; its ``config.json`` and ``README.md`` replace the shipped ones only. ``model.safetensors`` is
    never written: if ``save_pretrained`` would serialise it differently, the card and config are built
    from the existing file instead (its sha256 kept). Returns a one-line summary.
    """
    import lyadeq_zoo as lz
    from lyadeq_zoo import hub

    folder = entry.shipped_dir
    assert folder is not None
    weights = folder / hub.WEIGHTS_NAME
    before = hub.sha256_file(weights)
    info = hub.read_checkpoint_config(folder / hub.CONFIG_NAME)
    metrics = card_metrics(entry)
    model = hub.load_model(f"{hub.LOCAL_PREFIX}{folder}")
    with tempfile.TemporaryDirectory(prefix="lyadeq_zoo_card_") as tmp:
        staged = lz.save_pretrained(
            model,
            Path(tmp) / entry.name,
            metrics=metrics,
            dataset=info.get("dataset"),
            train_command=info.get("train_command"),
            epochs=info.get("epochs"),
            name=entry.name,
        )
        same_bytes = (staged / hub.WEIGHTS_NAME).read_bytes() == weights.read_bytes()
        if same_bytes:
            files = {name: (staged / name).read_bytes() for name in (hub.CONFIG_NAME, hub.CARD_NAME)}
        else:  # keep the shipped bytes and describe them as they are
            new_info = dict(info, name=entry.name, metrics=json.loads(json.dumps(metrics)), weights_sha256=before)
            files = {
                hub.CONFIG_NAME: (json.dumps(new_info, indent=2, allow_nan=False) + "\n").encode(),
                hub.CARD_NAME: hub.model_card(new_info).encode(),
            }
    for name, content in files.items():
        tmp_file = folder / f".{name}.{uuid.uuid4().hex}.tmp"
        tmp_file.write_bytes(content)
        os.replace(tmp_file, folder / name)
    after = hub.sha256_file(weights)
    registry_file = hub.registry_path()
    note = "weights unchanged"
    if after != before:  # cannot happen through this function; guards against a concurrent writer
        raw = json.loads(registry_file.read_text(encoding="utf-8"))
        raw[entry.name]["sha256"] = after
        tmp_file = registry_file.with_name(f".{registry_file.name}.{uuid.uuid4().hex}.tmp")
        tmp_file.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp_file, registry_file)
        note = f"WEIGHTS CHANGED during the update: registry sha256 set to {after}"
    elif entry.registry_sha256 not in (None, after):
        note = f"weights unchanged, but the registry records sha256 {entry.registry_sha256} != file {after}"
    how = "save_pretrained" if same_bytes else "card/config only (save_pretrained would re-serialise the weights)"
    return f"{entry.name}: updated {folder} from {', '.join(sorted(entry.results))} via {how}; {note}"


# -- command line ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/eval", help="folder of the eval JSONs (default: runs/eval)")
    parser.add_argument("--out", default="docs/results.md", help="page to write (default: docs/results.md)")
    parser.add_argument("--figures", default="docs/figures", help="folder for the figures (default: docs/figures)")
    parser.add_argument(
        "--update-cards",
        action="store_true",
        help="also write the eval numbers into each shipped model's config.json and README.md",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = Path(args.runs)
    if not runs.is_dir():
        print(f"note: {runs} does not exist; every model will be 'not evaluated'", file=sys.stderr)
    problems: list[str] = []
    models = collect_models(runs, problems)
    page = build_page(models, args, problems)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    found = sum(len(m.results) for m in models)
    print(f"wrote {out} ({found} result file(s) for {sum(bool(m.results) for m in models)} model(s))")
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if args.update_cards:
        for m in models:
            if not (m.shipped and m.results):
                continue
            mismatched = [slot for slot, r in m.results.items() if weights_status(m, r)[0] in ("other", "random")]
            if mismatched:
                print(f"{m.name}: NOT updated: {', '.join(mismatched)} evaluated other weights than the shipped ones")
                continue
            print(update_card(m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
