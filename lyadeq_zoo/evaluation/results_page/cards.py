"""``--update-cards``: the eval numbers into each shipped model's ``config.json`` and ``README.md``.

The weights file is never rewritten: the model is re-saved with ``lz.save_pretrained`` into a temporary
folder and only its ``config.json`` and ``README.md`` replace the shipped ones; if ``save_pretrained``
would serialise the weights to other bytes, both files describe the existing weights instead. The
pretrained index's sha256 is touched only if the weights file changed meanwhile.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...factory import create_model
from ...fileio import sha256_file, write_folder_atomic
from ...hub import (
    CARD_NAME,
    CONFIG_NAME,
    LOCAL_PREFIX,
    WEIGHTS_NAME,
    metadata_files,
    read_checkpoint_config,
    read_index,
    save_pretrained,
    set_entry,
)
from ...registry import get_component
from ..result import merge_results
from ..robustbench import robustbench_fields
from .entries import ModelEntry, weights_status


def card_metrics(entry: ModelEntry, model: nn.Module | None = None) -> dict[str, Any]:
    """The metrics to store in a shipped model's config.json (see :func:`lyadeq_zoo.evaluation.result.
    merge_results`): the results by slot, with the card's training metrics kept under ``training``, and the
    RobustBench-style fields (:mod:`lyadeq_zoo.evaluation.robustbench`) under ``robustbench``, with the mean
    solver steps from the results, else those of ``model`` (when given) on the shipped test sample."""
    card = entry.card or {}
    metrics = merge_results(entry.results, card.get("metrics"))
    dataset = card.get("dataset") or entry.dataset
    metrics["robustbench"] = robustbench_fields(entry.results, card.get("config") or {}, dataset)
    fields = metrics["robustbench"]
    if model is not None and fields.get("solver") is not None and fields.get("mean_solver_steps") is None:
        metrics["robustbench"]["mean_solver_steps"] = mean_solver_steps(model, dataset)
        metrics["robustbench"]["mean_solver_steps_on"] = f"the shipped {dataset} test sample, clean, eval mode"
    return metrics


@torch.no_grad()
def mean_solver_steps(model: nn.Module, dataset: str, batch_size: int = 250) -> float | None:
    """Mean forward-solver steps (``last_info["nstep"]``) of ``model`` in eval mode on the shipped test sample of
    ``dataset`` (the real images in the package), or None for a model that reports none."""
    images, _ = get_component("dataset", dataset)(split="test", root="sample").tensors()
    was_training = model.training
    model.eval()
    steps = []
    try:
        for start in range(0, images.shape[0], batch_size):
            model(images[start : start + batch_size])
            info = getattr(model, "last_info", None) or {}
            if "nstep" not in info:
                return None
            steps.append(info["nstep"].float().reshape(-1))
    finally:
        model.train(was_training)
    return round(float(torch.cat(steps).mean()), 2)


def update_card(entry: ModelEntry) -> str:
    """Rewrite ``config.json`` and ``README.md`` of ``entry``'s shipped folder with its eval results.

    The model is loaded strictly from the folder and re-saved with ``lz.save_pretrained`` into a temporary
    folder; its ``config.json`` and ``README.md`` replace the shipped ones only. ``model.safetensors`` is
    never written: if ``save_pretrained`` would serialise it differently, the card and config are built
    from the existing file instead (its sha256 kept). Returns a one-line summary.
    """
    folder = entry.shipped_dir
    if folder is None:
        raise ValueError(f"{entry.name}: not shipped (no local_path in the pretrained index); no card to update")
    weights = folder / WEIGHTS_NAME
    before = sha256_file(weights)
    info = read_checkpoint_config(folder / CONFIG_NAME)
    model = create_model(f"{LOCAL_PREFIX}{folder}")
    metrics = card_metrics(entry, model)
    with tempfile.TemporaryDirectory(prefix="lyadeq_zoo_card_") as tmp:
        staged = save_pretrained(
            model,
            Path(tmp) / entry.name,
            metrics=metrics,
            dataset=info.get("dataset"),
            train_command=info.get("train_command"),
            epochs=info.get("epochs"),
            name=entry.name,
            training_run=info.get("training_run"),
        )
        same_bytes = (staged / WEIGHTS_NAME).read_bytes() == weights.read_bytes()
        if same_bytes:
            files = {name: (staged / name).read_bytes() for name in (CONFIG_NAME, CARD_NAME)}
        else:  # keep the shipped bytes and describe them as they are
            new_info = dict(info, name=entry.name, metrics=json.loads(json.dumps(metrics)), weights_sha256=before)
            files = metadata_files(new_info)
    write_folder_atomic(folder, files)
    after = sha256_file(weights)
    note = "weights unchanged"
    if after != before:  # cannot happen through this function; guards against a concurrent writer
        set_entry(entry.name, {**read_index()[entry.name], "sha256": after})
        note = f"WEIGHTS CHANGED during the update: registry sha256 set to {after}"
    elif entry.registry_sha256 not in (None, after):
        note = f"weights unchanged, but the registry records sha256 {entry.registry_sha256} != file {after}"
    how = "save_pretrained" if same_bytes else "card/config only (save_pretrained would re-serialise the weights)"
    return f"{entry.name}: updated {folder} from {', '.join(sorted(entry.results))} via {how}; {note}"


def update_cards(models: Iterable[ModelEntry]) -> Iterator[str]:
    """:func:`update_card` for every shipped model with results, one summary line each (as it goes).

    A model some of whose results were computed on other weights than the shipped ones (or on random
    weights) is not updated; its line says so.
    """
    for m in models:
        if not (m.shipped and m.results):
            continue
        mismatched = [slot for slot, r in m.results.items() if weights_status(m, r)[0] in ("other", "random")]
        if mismatched:
            yield f"{m.name}: NOT updated: {', '.join(mismatched)} evaluated other weights than the shipped ones"
            continue
        yield update_card(m)
