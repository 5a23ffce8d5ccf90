"""Model assembly: ``build_model`` from a config, ``create_model`` from a zoo name, ``list_models``.

Zoo names follow ``{variant}_{dataset}`` and come from the YAML files ``configs/<dataset>/<variant>.yaml``
(files whose name starts with ``_`` are shared bases, not zoo entries). Each becomes a factory function
in the ``model`` registry, like timm's ``@register_model`` functions. Architectures that configs name
with ``model.type`` are classes in the same registry; :func:`list_models` lists only the factories.

Checkpoints (``hf-hub:`` / ``local-dir:`` names) and pretrained weights come from :mod:`lyadeq_zoo.hub`,
which hands back configs and verified files; the models are built here.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .config import load_config, merge_configs, parse_yaml, validate_config
from .errors import CheckpointError, ConfigError
from .hub import (
    CONFIG_NAME,
    checkpoint_files,
    has_pretrained,
    is_checkpoint_name,
    load_checkpoint_weights,
    load_pretrained_weights,
    read_checkpoint_config,
)
from .registry import build_component, get_component, list_components, register

NON_ZOO_CONFIG_DIRS = {"eval"}
ZOO_CONFIG_ATTRIBUTE = "zoo_config"


def configs_dir() -> Path:
    """The directory holding the zoo configs (the repo's ``configs/``, or the copy in the wheel)."""
    in_checkout = Path(__file__).resolve().parent.parent / "configs"
    if in_checkout.is_dir():
        return in_checkout
    return Path(str(resources.files("lyadeq_zoo") / "_configs"))


def build_model(config: Mapping[str, Any] | str | Path) -> torch.nn.Module:
    """Build a model from a config dict or YAML path; ``model.config`` keeps the resolved dict.

    ``build_model(model.config)`` rebuilds the same architecture (same state_dict keys and shapes).
    """
    if isinstance(config, (str, Path)):
        resolved = load_config(config)
    else:
        resolved = copy.deepcopy(dict(config))
        validate_config(resolved)
    if not resolved.get("model"):
        raise ConfigError("the config has no 'model' section; it must name an architecture with model.type")
    model = build_component("model", resolved["model"])
    model.config = resolved
    return model


def zoo_config_path(name: str) -> Path:
    """The config file behind zoo model ``name``."""
    entry = get_component("model", name)
    path = getattr(entry, ZOO_CONFIG_ATTRIBUTE, None)
    if path is None:
        raise ConfigError(f"model {name!r} is not a config-backed zoo entry")
    return Path(path)


def zoo_config(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The resolved config of zoo model ``name``; ``overrides`` deep-merge into its ``model`` section."""
    config = load_config(zoo_config_path(name))
    if overrides:
        config["model"] = merge_configs(config["model"], dict(overrides))
        validate_config(config)
    return config


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> torch.nn.Module:
    """A model by zoo name, ``hf-hub:org/repo[@rev]`` or ``local-dir:PATH``.

    ``overrides`` deep-merge into the config's ``model`` section, e.g.
    ``create_model("lyadeq_mnist", solver={"max_iter": 50})``.
    """
    if is_checkpoint_name(name):
        return model_from_checkpoint(name, **overrides)
    entry = get_component("model", name)
    if inspect.isclass(entry):
        raise ConfigError(
            f"{name!r} is an architecture (used as model.type in configs), not a zoo model; "
            f"zoo models: {', '.join(list_models())}"
        )
    return entry(pretrained=pretrained, **overrides)


def model_from_checkpoint(name: str, **overrides: Any) -> torch.nn.Module:
    """The model of checkpoint ``local-dir:PATH`` or ``hf-hub:org/repo[@revision]`` (a save_pretrained folder).

    ``overrides`` deep-merge into the checkpoint config's ``model`` section (e.g. solver options); the
    weights are then loaded strictly and checked against the sha256 config.json records. Returns the
    model in eval mode.
    """
    config_path, weights_path = checkpoint_files(name)
    info = read_checkpoint_config(config_path, source=f"{name}: {CONFIG_NAME}")
    config = info["config"]
    if overrides:
        config = dict(config, model=merge_configs(config["model"], dict(overrides)))
    try:
        model = build_model(config)
    except ConfigError as err:
        raise CheckpointError(f"{name}: {CONFIG_NAME} does not build a model with this lyadeq-zoo: {err}") from err
    load_checkpoint_weights(model, weights_path, info, label=name)
    return model.eval()


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Zoo model names matching ``pattern``; with ``pretrained=True`` only those with weights."""
    names = [n for n in list_components("model", pattern) if not inspect.isclass(get_component("model", n))]
    if pretrained:
        names = [n for n in names if has_pretrained(n)]
    return names


def _zoo_entry(name: str, path: Path) -> Callable[..., torch.nn.Module]:
    def entry(pretrained: bool = False, **overrides: Any) -> torch.nn.Module:
        model = build_model(zoo_config(name, overrides))
        if pretrained:
            load_pretrained_weights(model, name)
        return model

    # Only the file's own `meta` is read here: full loading validates against the registries,
    # which must not happen (nor trigger plugin discovery) at import time.
    raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
    meta = raw.get("meta") or {}
    entry.__name__ = name
    entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = (
        f"{meta.get('description', name)}\n\nConfig: configs/{path.parent.name}/{path.name}. "
        "Pass pretrained=True for the shipped weights; keyword overrides merge into the model config."
    )
    setattr(entry, ZOO_CONFIG_ATTRIBUTE, str(path))
    return entry


def register_zoo_configs(directory: Path | None = None) -> list[str]:
    """Register every ``<dataset>/<variant>.yaml`` under ``directory`` as zoo model ``variant_dataset``."""
    directory = directory or configs_dir()
    names = []
    for path in sorted(directory.glob("*/*.yaml")):
        if path.parent.name in NON_ZOO_CONFIG_DIRS or path.name.startswith("_"):
            continue
        name = f"{path.stem}_{path.parent.name}"
        register("model", name)(_zoo_entry(name, path))
        names.append(name)
    return names
