"""The zoo's models as the results page sees them: config facts, the shipped checkpoint, the eval results.

Results are read from ``RUNS/<zoo_name>_<suffix>.json`` (as ``tools/eval.py --json`` writes them) for the
suite slots ``paper``, ``strong`` (file suffix ``strong`` or ``strong_cpu``) and ``curve``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import CheckpointError, DataFormatError
from ...factory import list_models, zoo_config, zoo_config_path
from ...fileio import sha256_file
from ...hub import CONFIG_NAME, LOCAL_PREFIX, WEIGHTS_NAME, read_checkpoint_config, read_index, shipped_folder
from ..result import read_result

# suite slot -> file suffixes tried, in order (RUNS/<name>_<suffix>.json)
SUITE_FILES: dict[str, tuple[str, ...]] = {
    "paper": ("paper",),
    "strong": ("strong", "strong_cpu"),
    "curve": ("curve",),
    "autoattack": ("autoattack", "robustbench"),
}
DATASET_ORDER = ("mnist", "cifar10", "svhn", "cifar100")
# The baseline without a DEQ (plain) first, then the paper's Table 1 rows; the adversarially trained models last,
# their own baseline first.
VARIANT_ORDER = (
    "plain", "deq", "deq_orth", "lyadeq_no_orth", "lyadeq", "plain_trades", "lyadeq_pgdat", "lyadeq_trades"
)
# The checkout root: relative local-dir: paths in results are relative to it (tools/eval.py runs from there).
CHECKOUT_ROOT = Path(__file__).resolve().parents[3]


@dataclass
class ModelEntry:
    """One zoo model: its config facts, shipped checkpoint (if any) and eval results by suite slot."""

    name: str
    dataset: str
    variant: str
    meta: dict[str, Any]
    train: dict[str, Any]
    shipped_dir: Path | None = None
    registry_sha256: str | None = None  # the pretrained index's sha256 of the weights
    card: dict[str, Any] | None = None  # the shipped config.json
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # slot -> lz.evaluate result
    files: dict[str, Path] = field(default_factory=dict)  # slot -> JSON path

    @property
    def shipped(self) -> bool:
        return self.shipped_dir is not None

    @property
    def baseline(self) -> bool:
        """Whether the config marks the model as a zoo baseline the paper does not have (``meta.baseline``)."""
        return bool(self.meta.get("baseline"))

    @property
    def paper_row(self) -> dict[str, Any] | None:
        """``{"table", "clean", "ifgsm": [4], "pgd": [4]}`` from the config's ``meta``: Table 1 (eps 2/4/6/8),
        or Table 2 (8/255 only, the rest None), or None when the paper reports nothing for the model."""
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


def collect_models(runs_dir: Path) -> tuple[list[ModelEntry], list[str]]:
    """Every config-backed zoo model with its shipped checkpoint and the eval JSONs found in ``runs_dir``,
    sorted by data set and variant, and the problems met while reading (Markdown lines; nothing raises)."""
    problems: list[str] = []
    index = read_index()
    entries = []
    for name in list_models():
        try:
            path = zoo_config_path(name)
            config = zoo_config(name)
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
        if name in index:
            _add_shipped(entry, index[name], problems)
        _add_results(entry, runs_dir, problems)
        entries.append(entry)
    rank = {v: i for i, v in enumerate(VARIANT_ORDER)}
    entries.sort(key=lambda e: (dataset_rank(e.dataset), rank.get(e.variant, len(rank)), e.variant))
    return entries, problems


def _add_shipped(entry: ModelEntry, index_entry: Mapping[str, Any], problems: list[str]) -> None:
    entry.registry_sha256 = index_entry.get("sha256")
    if index_entry.get("local_path"):
        folder = shipped_folder(index_entry["local_path"])
        entry.shipped_dir = folder
        try:
            entry.card = read_checkpoint_config(folder / CONFIG_NAME)
        except CheckpointError as err:
            problems.append(f"`{entry.name}`: shipped config.json not readable ({err})")


def _add_results(entry: ModelEntry, runs_dir: Path, problems: list[str]) -> None:
    for slot, suffixes in SUITE_FILES.items():
        for suffix in suffixes:
            file = runs_dir / f"{entry.name}_{suffix}.json"
            if not file.is_file():
                continue
            try:
                entry.results[slot] = read_result(file)
            except DataFormatError as err:
                problems.append(f"`{file}`: {err}; ignored")
                continue
            entry.files[slot] = file
            break


def dataset_rank(dataset: str) -> tuple[int, str]:
    """Sort key of a data set: the order of :data:`DATASET_ORDER`, then others by name."""
    return (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER), dataset)


def weights_status(entry: ModelEntry, result: Mapping[str, Any]) -> tuple[str, str]:
    """Whether ``result`` was computed on the shipped weights: ``(status, text)`` with status ``shipped``
    (zoo name, pretrained), ``same`` / ``other`` (sha256 of the evaluated folder vs the index's),
    ``unchecked`` (folder not found here), ``random`` or ``unknown``."""
    model = result.get("model") or {}
    name, weights = str(model.get("name", "")), model.get("weights")
    if name == entry.name and weights == "pretrained":
        return "shipped", "shipped weights (zoo name)"
    if weights == "random":
        return "random", f"`{name}`: **random weights**"
    if name.startswith(LOCAL_PREFIX):
        raw = Path(name[len(LOCAL_PREFIX) :]).expanduser()
        for folder in [raw] if raw.is_absolute() else [CHECKOUT_ROOT / raw, Path.cwd() / raw]:
            file = folder / WEIGHTS_NAME
            if file.is_file():
                if entry.registry_sha256 is None:
                    return "unchecked", f"`{name}` (model not shipped)"
                if sha256_file(file) == entry.registry_sha256:
                    return "same", f"`{name}`: same sha256 as shipped"
                return "other", f"`{name}`: **other weights than shipped**"
        return "unchecked", f"`{name}` (folder not found here: not checked against the shipped weights)"
    return "unknown", f"`{name or '?'}` ({weights or 'unknown weights'})"
