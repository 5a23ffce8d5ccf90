"""``save_pretrained``: write a model as a checkpoint folder (``model.safetensors``, ``config.json``, ``README.md``)."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_dumps

from ..fileio import json_safe, write_folder_atomic
from ..version import __version__
from .card import model_card
from .layout import CARD_NAME, CONFIG_NAME, FORMAT_VERSION, LIBRARY_NAME, WEIGHTS_NAME, input_spec


def save_pretrained(
    model: torch.nn.Module,
    directory: str | Path,
    *,
    metrics: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    train_command: str | None = None,
    epochs: int | None = None,
    name: str | None = None,
    training_run: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a checkpoint folder: ``model.safetensors`` + ``config.json`` + ``README.md``.

    Args:
        model: a model built by ``lz.build_model`` / ``lz.create_model`` (it must carry ``model.config``).
        directory: the folder to write; created if needed. Other files in it are left alone.
        metrics: measured results, e.g. ``lz.evaluate``'s dict (numbers, possibly nested); stored in
            ``config.json`` (NaN / inf as null) and summarised in the model card. ``None`` when not measured.
        dataset: the data set name; defaults to the config's ``data.type``.
        train_command: the command line that trained the model (shown in the card).
        epochs: epochs actually run, when known.
        name: the model's name in the card; defaults to the folder name.
        training_run: how it trained (JSON values, in the card): ``device``, ``threads``, ``wall_seconds``...

    Files are written atomically (``lyadeq_zoo.fileio.write_folder_atomic``): a new folder appears complete,
    and in an existing one each file is replaced whole. Returns the folder's path.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise ValueError(
            "save_pretrained needs model.config (the resolved config dict with a 'model' section), which "
            "lz.build_model / lz.create_model set; build the model through them, or set model.config"
        )
    config = copy.deepcopy(dict(config))
    directory = Path(directory).expanduser()
    metrics = json_safe(copy.deepcopy(dict(metrics))) if metrics is not None else None
    try:
        json.dumps(config, allow_nan=False)
        json.dumps(metrics, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"save_pretrained: model.config and metrics must be JSON-serialisable: {err}") from err

    weights = safetensors_dumps(_state_for_saving(model), metadata={"format": "pt", "lyadeq_zoo": __version__})
    info = {
        "library": LIBRARY_NAME,
        "zoo_version": __version__,
        "format_version": FORMAT_VERSION,
        "name": name or directory.resolve().name,
        "dataset": dataset or _config_dataset(config),
        "input": input_spec(config["model"]),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "metrics": metrics,
        "epochs": int(epochs) if epochs is not None else None,
        "train_command": train_command,
        "config": config,
    }
    if training_run is not None:
        info["training_run"] = json_safe(copy.deepcopy(dict(training_run)))
    write_folder_atomic(directory, {WEIGHTS_NAME: weights, **metadata_files(info)})
    return directory


def metadata_files(info: Mapping[str, Any]) -> dict[str, bytes]:
    """``config.json`` and ``README.md`` of a checkpoint whose config.json content is ``info``, as bytes.

    The one serialisation of both files: for re-describing existing weights (new metrics, a regenerated
    card) without rewriting ``model.safetensors``.
    """
    config_text = json.dumps(info, indent=2, allow_nan=False) + "\n"
    return {CONFIG_NAME: config_text.encode(), CARD_NAME: model_card(info).encode()}


def _state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict as contiguous CPU tensors; tensors sharing storage are copied (safetensors refuses them)."""
    state: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in model.state_dict().items():
        tensor = value.detach().cpu()
        storage = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if storage in seen and tensor.numel() > 0:
            tensor = tensor.clone()
        seen.add(storage)
        state[key] = tensor.contiguous()
    return state


def _config_dataset(config: Mapping[str, Any]) -> str | None:
    data = config.get("data")
    return data.get("type") if isinstance(data, Mapping) else None
