"""The model card (a checkpoint's README.md), built from the checkpoint's ``config.json`` content alone.

The card is a Hub metadata header (license, tags, data set, a ``model-index`` with the measured metrics)
followed by Markdown sections: intro, usage, results, training (schedule, command, resolved config) and
citation. :func:`model_card` assembles them; each section is its own function.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .layout import LIBRARY_NAME

LICENSE = "apache-2.0"
EVAL_FORMAT_PREFIX = "lyadeq-zoo-eval/"  # the result format of lz.evaluate
PAPER_BIBTEX = """@inproceedings{chu2024lyapunov,
  title     = {Lyapunov-Stable Deep Equilibrium Models},
  author    = {Chu, Haoyu and Wei, Shikui and Liu, Ting and Zhao, Yao and Miyatake, Yuto},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year      = {2024},
  eprint    = {2304.12707},
  archivePrefix = {arXiv}
}"""
CARD_TAGS = (
    "image-classification",
    "deep-equilibrium-model",
    "lyapunov-stability",
    "adversarial-robustness",
    "pytorch",
    "safetensors",
    LIBRARY_NAME,
)
DEQ_TAGS = ("deep-equilibrium-model", "lyapunov-stability")  # left off the cards of baselines without a DEQ

# Hub data set ids of the data sets the zoo trains on (the short legacy names redirect on the Hub).
HUB_DATASETS = {"mnist": "mnist", "cifar10": "cifar10", "cifar100": "cifar100", "svhn": "svhn"}
DATASET_TITLES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN"}


# -- metrics as card rows ------------------------------------------------------------------------------
def flatten_metrics(metrics: Mapping[str, Any] | None, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a (nested) metrics dict, keyed by their ``/``-joined path; non-finite values dropped."""
    flat: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, path))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[path] = float(value)
    return flat


def is_evaluate_result(metrics: Mapping[str, Any] | None) -> bool:
    """Whether ``metrics`` is an ``lz.evaluate`` result (``format: lyadeq-zoo-eval/...``)."""
    return bool(metrics) and str(metrics.get("format", "")).startswith(EVAL_FORMAT_PREFIX)


def metric_rows(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """The model card's metric rows, name -> value.

    An ``lz.evaluate`` result (accuracies as fractions) becomes rows in percent: clean accuracy, each
    attack's own accuracy at each eps, and the worst case over attacks per eps; other numeric top-level
    entries (e.g. ``clean_accuracy`` from training) follow as given. Any other mapping contributes its
    numeric leaves as given (see :func:`flatten_metrics`).
    """
    if not metrics:
        return {}
    if not is_evaluate_result(metrics):
        return flatten_metrics(metrics)
    rows: dict[str, float] = {}
    clean = (metrics.get("clean") or {}).get("accuracy")
    if clean is not None:
        rows["clean accuracy (%)"] = 100.0 * clean
    for attack in metrics.get("attacks") or []:
        for item in attack.get("results") or []:
            if item.get("accuracy") is not None:
                rows[f"{attack['name']} @ eps {item['eps_255']:g}/255 (%)"] = 100.0 * item["accuracy"]
    for item in metrics.get("worst_case") or []:
        rows[worst_case_row(item["eps_255"])] = 100.0 * item["accuracy"]
    skip = {"n", "seed", "format"}
    for key, value in metrics.items():
        if key not in skip and isinstance(value, (int, float)) and not isinstance(value, bool):
            rows[key] = float(value)
    return rows


def worst_case_row(eps_255: float, suite: str | None = None, n: int | None = None) -> str:
    """The card row name of a worst case at ``eps_255`` (x 1/255): the card's own result's
    (``worst case @ eps 8/255 (%)``), or with ``suite`` another suite's stored beside it
    (``worst case, strong_cpu suite (n=500) @ eps 8/255 (%)``; ``eps_255`` rounded to 3 digits by the caller)."""
    if suite is None:
        return f"worst case @ eps {eps_255:g}/255 (%)"
    return f"worst case, {suite} suite (n={n}) @ eps {eps_255:g}/255 (%)"


# (key of a worst_case entry, card column): the solver's statistics at the worst-case inputs, in %
STABILITY_COLUMNS = (("solver_converged", "solver converged (%)"), ("lyapunov_certified", "Lyapunov certified (%)"))


def stability_cells(metrics: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """Row name -> {column: value in %} for the worst-case rows whose ``worst_case`` entry holds the solver's
    statistics at the worst-case inputs (``lz.evaluate`` on a DEQ): the card's own result's rows and those of
    the suites stored beside it (``strong``); {} for results without them."""
    if not is_evaluate_result(metrics):
        return {}
    nested = [value for value in metrics.values() if isinstance(value, Mapping) and is_evaluate_result(value)]
    cells: dict[str, dict[str, float]] = {}
    for result in [metrics, *nested]:
        for item in result.get("worst_case") or []:
            values = {column: 100.0 * item[key] for key, column in STABILITY_COLUMNS if item.get(key) is not None}
            if not values:
                continue
            if result is metrics:
                cells[worst_case_row(item["eps_255"])] = values
            else:  # the rows merge_results adds for a suite stored beside the card's own result
                cells[worst_case_row(round(float(item["eps_255"]), 3), result.get("suite"), result.get("n"))] = values
    return cells


def fine_tuned_from(config: Mapping[str, Any]) -> str | None:
    """``train.init_from`` of a resolved config (the weights its training started from), else None."""
    train_section = config.get("train")
    return train_section.get("init_from") if isinstance(train_section, Mapping) else None


def _is_accuracy(row_name: str) -> bool:
    lowered = row_name.lower()
    return any(word in lowered for word in ("acc", "clean", "pgd", "fgsm", "attack", "robust", "worst"))


def _dataset_title(dataset: str) -> str:
    return DATASET_TITLES.get(dataset, dataset)


# -- the card -------------------------------------------------------------------------------------------
def model_card(info: Mapping[str, Any]) -> str:
    """The README.md model card of a checkpoint whose ``config.json`` content is ``info``."""
    name = info.get("name") or "lyadeq-zoo model"
    dataset = info.get("dataset")
    config = info.get("config") or {}
    meta = config.get("meta") or {}
    rows = metric_rows(info.get("metrics") or {})
    lines = [
        *metadata_header(name, dataset, rows, baseline=bool(meta.get("baseline"))),
        *intro_section(name, meta),
        *usage_section(info.get("input") or {}),
        *results_section(rows, info.get("metrics") or {}, dataset, meta),
        *training_section(info, config, meta),
        *citation_section(),
    ]
    return "\n".join(lines)


def metadata_header(
    name: str, dataset: str | None, rows: Mapping[str, float], *, baseline: bool = False
) -> list[str]:
    """The YAML front matter the Hub reads: license, library, tags, data set and a ``model-index``; a ``baseline``
    (no DEQ) is not tagged as a deep equilibrium or Lyapunov-stable model."""
    from huggingface_hub import EvalResult, ModelCardData

    eval_results = None
    if dataset and rows:
        eval_results = [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=HUB_DATASETS.get(dataset, dataset),
                dataset_name=_dataset_title(dataset),
                dataset_split="test",
                metric_type="accuracy" if _is_accuracy(key) else key,
                metric_name=key,
                metric_value=round(value, 4),  # no float noise such as 0.9199999999999999 in the card
            )
            for key, value in rows.items()
        ]
    card_data = ModelCardData(
        license=LICENSE,
        library_name=LIBRARY_NAME,
        tags=[tag for tag in CARD_TAGS if not (baseline and tag in DEQ_TAGS)],
        datasets=[HUB_DATASETS.get(dataset, dataset)] if dataset else None,
        metrics=["accuracy"] if rows else None,
        model_name=name if eval_results else None,
        eval_results=eval_results,
    )
    return ["---", card_data.to_yaml(), "---", ""]


PAPER_NOTE = (
    "Lyapunov-stable deep equilibrium models (LyaDEQ) follow Chu et al., *Lyapunov-Stable Deep Equilibrium Models*, "
    "AAAI 2024 ([arXiv:2304.12707](https://arxiv.org/abs/2304.12707))."
)
BASELINE_NOTE = (
    "This is a zoo baseline, not a deep equilibrium model: it has no fixed-point solve and no Lyapunov module, and "
    "is trained with the same recipe as the zoo's DEQ and LyaDEQ models (Chu et al., *Lyapunov-Stable Deep "
    "Equilibrium Models*, AAAI 2024, [arXiv:2304.12707](https://arxiv.org/abs/2304.12707)) to show what the "
    "equilibrium adds."
)


def intro_section(name: str, meta: Mapping[str, Any]) -> list[str]:
    """Title, the config's ``meta.description`` and the paper the method follows."""
    description = meta.get("description") or "A deep equilibrium model from lyadeq-zoo."
    return [
        f"# {name}",
        "",
        str(description),
        "",
        BASELINE_NOTE if meta.get("baseline") else PAPER_NOTE,
        "",
    ]


def usage_section(spec: Mapping[str, Any]) -> list[str]:
    """How to load the checkpoint and what to feed it (``spec``: config.json's ``input``)."""
    return [
        "## Usage",
        "",
        "```python",
        "import lyadeq_zoo as lz",
        "",
        'model = lz.create_model("hf-hub:<this repo id>").eval()  # or "local-dir:<this folder>"',
        "logits = model(images)  # images: float (N, C, H, W) in [0, 1]; logits: (N, num_classes)",
        "```",
        "",
        f"Input: images in [0, 1], {spec.get('in_chans')} channel(s), size {spec.get('img_size')}; "
        f"normalisation (mean {spec.get('mean')}, std {spec.get('std')}) is applied inside the model.",
        "",
    ]


def results_section(
    rows: Mapping[str, float], metrics: Mapping[str, Any], dataset: str | None, meta: Mapping[str, Any]
) -> list[str]:
    """The metrics table (``rows`` from :func:`metric_rows` of ``metrics``) and the paper's numbers, if recorded."""
    lines = ["## Results", ""]
    if rows:
        where = f" on the test split of {_dataset_title(dataset)}" if dataset else ""
        lines += [f"Measured{where}:", ""]
        cells = stability_cells(metrics)
        columns = [c for _, c in STABILITY_COLUMNS if any(c in row for row in cells.values())]
        lines += ["| metric | value |" + "".join(f" {c} |" for c in columns), "|---|---|" + "---|" * len(columns)]
        for key, value in rows.items():
            extra = "".join(f" {_stability_cell(cells.get(key, {}).get(c))} |" for c in columns)
            lines.append(f"| {key} | {value:.4g} |{extra}")
        if is_evaluate_result(metrics):
            lines += [
                "",
                f"lz.evaluate, suite `{metrics.get('suite')}`, {metrics.get('n')} test samples, seed "
                f"{metrics.get('seed')}. Each attack's own accuracy counts clean mistakes as non-robust; the worst "
                "case counts a sample as robust only if every attack failed on it. Full results: config.json.",
            ]
            if columns:
                lines[-1] += (
                    " Solver converged / Lyapunov certified: % of the images whose forward solve reached its "
                    "tolerance / whose Lyapunov decrease certificate held at their worst-case input (the example of "
                    "the first attack that broke them, else of the last attack)."
                )
    else:
        lines.append("No metrics were measured for this checkpoint.")
    lines += robustbench_lines(metrics.get("robustbench"))
    if meta.get("paper_table1"):
        lines += ["", f"The paper reports (Table 1, accuracy %): `{json.dumps(meta['paper_table1'])}`."]
    return [*lines, ""]


def robustbench_lines(fields: Mapping[str, Any] | None) -> list[str]:
    """The RobustBench-style fields of ``metrics["robustbench"]`` as one table (none when absent)."""
    if not isinstance(fields, Mapping):
        return []
    keys = ("clean_acc", "clean_n", "autoattack_acc", "autoattack_n", "worst_case_acc", "worst_case_n", "unreliable",
            "additional_data", "number_forward_passes", "solver", "max_iter", "tol", "mean_solver_steps",
            "attack_grad_modes")
    shown = [k for k in keys if k in fields]
    eps = fields.get("eps")
    eps_text = "n/a" if eps is None else (f"{round(eps * 255)}/255" if abs(eps * 255 - round(eps * 255)) < 1e-6
                                         else f"{eps:g}")
    return [
        "",
        f"RobustBench-style fields (threat model {fields.get('threat_model')}, eps {eps_text}; accuracies in %, `_n` "
        "the images each was measured on; `unreliable`: the worst case over every attack lies below AutoAttack's own "
        "accuracy on the same images):",
        "",
        "| " + " | ".join(shown) + " |",
        "|" + "---|" * len(shown),
        "| " + " | ".join(_field_cell(fields[k]) for k in shown) + " |",
    ]


def _field_cell(value: Any) -> str:
    """A RobustBench field as a table cell: n/a, yes/no, comma-separated lists, else the value."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _stability_cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def training_section(info: Mapping[str, Any], config: Mapping[str, Any], meta: Mapping[str, Any]) -> list[str]:
    """Where training started, how long it ran against the paper's schedule, its command and resolved config."""
    lines = ["## Training", ""]
    init_from = fine_tuned_from(config)
    if init_from:
        lines += [f"**Fine-tuned: training started from the weights of `{init_from}`**, not from a random init.", ""]
    epochs = info.get("epochs")
    if epochs is not None:
        lines += [_schedule_line(epochs, meta.get("paper_epochs")), ""]
    lines += training_run_lines(info.get("training_run"))
    if info.get("train_command"):
        lines += ["Command:", "", "```bash", str(info["train_command"]), "```", ""]
    return [
        *lines,
        "Config (resolved; `lz.build_model(config)` rebuilds the architecture):",
        "",
        "```json",
        json.dumps(config, indent=2),
        "```",
        "",
        f"Saved with lyadeq-zoo {info.get('zoo_version')} (checkpoint format {info.get('format_version')}).",
        "",
    ]


def training_run_lines(run: Mapping[str, Any] | None) -> list[str]:
    """Where and how long the training ran (``info["training_run"]``), one line; none when unknown."""
    if not isinstance(run, Mapping) or not run:
        return []
    parts = []
    if run.get("device"):
        where = str(run["device"])
        if run.get("threads"):
            where += f", {run['threads']} thread{'s' if run['threads'] != 1 else ''}"
        parts.append(f"on {where}")
    if run.get("wall_seconds") is not None:
        parts.append(f"{float(run['wall_seconds']) / 3600:.2f} h of training (summed epoch times, evaluation excluded)")
    if run.get("amp") is not None or run.get("channels_last") is not None:
        parts.append(f"amp (bf16 backbone) {'on' if run.get('amp') else 'off'}, channels_last "
                     f"{'on' if run.get('channels_last') else 'off'}")
    if run.get("resumed"):
        parts.append("resumed from checkpoints across sessions (the command below is the last one)")
    return [f"Trained {'; '.join(parts)}.", ""] if parts else []


def _schedule_line(epochs: int, paper_epochs: int | None) -> str:
    """Epochs run; a schedule shorter than the paper's is flagged, since its numbers are no reproduction."""
    if paper_epochs and epochs < paper_epochs:
        return (
            f"**Shortened schedule: {epochs} epoch{'s' if epochs != 1 else ''} run, the paper "
            f"trains {paper_epochs}.** "
            "Numbers from this checkpoint are not comparable with the paper's as a reproduction."
        )
    return f"Epochs run: {epochs}" + (f" (paper: {paper_epochs})." if paper_epochs else ".")


def citation_section() -> list[str]:
    """The BibTeX entry of the paper."""
    return ["## Citation", "", "```bibtex", PAPER_BIBTEX, "```", ""]
