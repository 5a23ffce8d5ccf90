"""The page's "How to reproduce" section: the exact training, evaluation and page commands."""

from __future__ import annotations

from collections.abc import Sequence

from .entries import ModelEntry, dataset_rank
from .formatting import title

DATA_DIR = "../shared/data"  # where the full data sets are on the machines the zoo is built on
# slot -> (suite, --limit) of the eval command for a slot that has no result yet
DEFAULT_RUNS = (
    ("paper", "paper", None),
    ("strong", "strong_cpu", 500),
    ("autoattack", "robustbench", 500),
    ("curve", "curve", 500),
)


def reproduce_section(models: Sequence[ModelEntry], *, runs: str, out: str, figures: str) -> list[str]:
    """The exact commands: training (as recorded in each shipped config.json), evaluation, this page.

    ``runs``, ``out``, ``figures``: the folder of eval JSONs, the page and the figure folder, as given to
    ``tools/results_page.py`` (written into the commands as they are).
    """
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
    for dataset in sorted({m.dataset for m in models}, key=dataset_rank):
        group = [m for m in models if m.dataset == dataset]
        if not any(m.shipped or m.results for m in group):
            continue
        lines += [f"### {title(dataset)}", "", "```bash"]
        for m in group:
            if m.shipped or m.results:
                lines += [*_model_commands(m, runs), ""]
        if lines[-1] == "":
            lines.pop()
        lines += ["```", ""]
    lines += [
        "Then this page and the model cards:",
        "",
        "```bash",
        f"python tools/results_page.py --runs {runs} --out {out} --figures {figures} --update-cards",
        "```",
        "",
        "Add `--threads 1` and `OMP_NUM_THREADS=1` on a shared CPU; `--device cuda` uses a GPU. Evaluations are "
        "deterministic for a given `--seed` on the same device.",
    ]
    return lines


def _model_commands(m: ModelEntry, runs: str) -> list[str]:
    """A model's training command (recorded, else the default one), publishing, and its eval commands."""
    card = m.card or {}
    lines = [f"# {m.name}"]
    recorded = card.get("train_command")
    if recorded:
        lines.append(f"{recorded}  # recorded")
    else:
        lines.append(
            f"python tools/train.py {m.name} --out runs/zoo/{m.name} --data-dir {DATA_DIR} train.final_eval=null"
        )
    if not m.shipped:
        lines.append(f"python tools/publish.py {m.name} runs/zoo/{m.name}/final --ship")
    for slot, suite_default, limit_default in DEFAULT_RUNS:
        result = m.results.get(slot)
        suite = (result or {}).get("suite") or suite_default
        limit = ((result or {}).get("data") or {}).get("limit") if result else limit_default
        seed = (result or {}).get("seed")
        on_sample = str(((result or {}).get("data") or {}).get("root")) == "sample"
        where = "" if on_sample else f" --data-dir {DATA_DIR}"  # no --data-dir: the shipped sample
        command = (
            f"python tools/eval.py {m.name} --pretrained{where} --suite {suite}"
            + (f" --limit {limit}" if limit else "")
            + (f" --seed {seed}" if seed else "")
            + f" --json {runs}/{m.name}_{slot}.json --plot {runs}/{m.name}_{slot}.png"
        )
        lines.append(command + ("" if result else "  # not run yet"))
    return lines
