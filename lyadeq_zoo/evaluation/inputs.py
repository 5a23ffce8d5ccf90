"""What an evaluation runs on besides the model: the data set its config names and that set's test split."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..registry import get_component

# keys of a config's data section that say where and which samples, not how the set is built
PLACEMENT_KEYS = ("type", "split", "root", "download", "limit")


def dataset_name(model: nn.Module) -> str | None:
    """The data set type named in ``model.config["data"]`` (zoo models), or None."""
    config = getattr(model, "config", None)
    if isinstance(config, Mapping) and isinstance(config.get("data"), Mapping):
        value = config["data"].get("type")
        return str(value) if value is not None else None
    return None


def evaluation_data(
    model: nn.Module, dataset: str, *, split: str = "test", root: str = "sample", limit: int | None = None
) -> tuple[Dataset, dict[str, Any]]:
    """The registered data set ``dataset`` with the build options of ``model.config["data"]`` (all its keys
    but the placement ones), from ``root`` (a folder with the full set, or ``"sample"``: the shipped sample).

    Returns ``(data set, data)`` with ``data = {"dataset", "split", "root", "limit"}``, the record that
    ``tools/eval.py`` stores in the result JSON.
    """
    spec = dict((getattr(model, "config", None) or {}).get("data") or {})
    options = {k: v for k, v in spec.items() if k not in PLACEMENT_KEYS}
    data = get_component("dataset", dataset)(split=split, root=root, limit=limit, **options)
    return data, {"dataset": dataset, "split": split, "root": root, "limit": limit}
