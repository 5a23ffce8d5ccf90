"""Model assembly: ``build_model`` from a config, ``create_model`` from a zoo name, ``list_models``.

Zoo names follow ``{variant}_{dataset}`` and come from the YAML files ``configs/<dataset>/<variant>.yaml``
(files whose name starts with ``_`` are shared bases, not zoo entries). Each becomes a factory function
in the ``model`` registry, like timm's ``@register_model`` functions. Architectures that configs name
with ``model.type`` are classes in the same registry; :func:`list_models` lists only the factories.

Checkpoints (``hf-hub:`` / ``local-dir:`` names) and pretrained weights come from :mod:`lyadeq_zoo.hub`,
which hands back configs and verified files; the models are built here.

Loaded weights and a different ``num_classes`` / ``in_chans`` (timm's behaviour): the model is built as the
weights were trained, loaded strictly, then adapted: ``reset_classifier(num_classes)`` (a new classifier; ``0``
gives a feature model) and ``adapt_input_channels(in_chans, mean=..., std=...)`` (see
:mod:`lyadeq_zoo.channels`). Nothing is ever loaded with ``strict=False``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .channels import adapt_channel_values, check_channel_count
from .config import load_config, merge_configs, parse_yaml, validate_config
from .errors import CheckpointError, ConfigError
from .hub import (
    CONFIG_NAME,
    LICENSE,
    checkpoint_files,
    has_pretrained,
    is_checkpoint_name,
    load_checkpoint_weights,
    load_pretrained_weights,
    read_checkpoint_config,
    read_index,
    shipped_folder,
)
from .registry import build_component, get_component, list_components, register
from .version import __version__

NON_ZOO_CONFIG_DIRS = {"eval"}
ZOO_CONFIG_ATTRIBUTE = "zoo_config"
# Overrides that adapt loaded weights instead of changing the architecture they are loaded into.
ADAPTING_KEYS = ("num_classes", "in_chans")
PAPER_CFG = {
    "paper_ids": "arXiv:2304.12707",
    "paper_name": "Lyapunov-Stable Deep Equilibrium Models",
    "origin_url": "https://arxiv.org/abs/2304.12707",
}


def configs_dir() -> Path:
    """The directory holding the zoo configs and the evaluation suites (``<dataset>/*.yaml``, ``eval/*.yaml``).

    Installed from a wheel or an sdist: ``lyadeq_zoo/_configs`` (pyproject.toml ships configs/ there). From a
    checkout (``PYTHONPATH`` or the editable install): the repository's ``configs/`` beside ``lyadeq_zoo/``.
    The installed copy is looked for first, so that a stray ``configs/`` folder next to the installed package
    (e.g. in site-packages) is never mistaken for the zoo's.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "_configs", package.parent / "configs"):
        if candidate.is_dir():
            return candidate
    raise ConfigError(
        f"this lyadeq_zoo ({package}) has no zoo configs: neither {package / '_configs'} (an installed wheel) "
        f"nor {package.parent / 'configs'} (a checkout) exists; reinstall (`pip install --force-reinstall "
        "lyadeq-zoo`) or, in a checkout, restore the folder (`git checkout -- configs`)"
    )


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
    ``create_model("lyadeq_mnist", solver={"max_iter": 50})``. With loaded weights (``pretrained=True``, or a
    checkpoint), ``num_classes`` and ``in_chans`` adapt the loaded model instead (module docstring), e.g.
    ``create_model("lyadeq_cifar10", pretrained=True, num_classes=0)`` is a feature model. Zoo names also take
    ``cache_dir`` (the Hugging Face cache folder for ``pretrained=True``).
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

    def build(config: Mapping[str, Any]) -> torch.nn.Module:
        try:
            return build_model(config)
        except ConfigError as err:
            raise CheckpointError(
                f"{name}: {CONFIG_NAME} does not build a model with this lyadeq-zoo: {err}"
            ) from err

    def load(model: torch.nn.Module) -> None:
        load_checkpoint_weights(model, weights_path, info, label=name)

    return _load_adapted(info["config"], overrides, build=build, load=load, label=name).eval()


def _load_adapted(
    config: Mapping[str, Any],
    overrides: Mapping[str, Any],
    *,
    load: Callable[[torch.nn.Module], Any],
    label: str,
    build: Callable[[Mapping[str, Any]], torch.nn.Module] = build_model,
) -> torch.nn.Module:
    """Build ``config`` with ``overrides``, ``load`` its weights strictly, then adapt ``num_classes`` / ``in_chans``.

    An override of ``num_classes`` or ``in_chans`` that differs from ``config`` is not built: the model is
    built as the weights were trained, loaded, then ``reset_classifier`` / ``adapt_input_channels`` run
    (``mean``/``std`` overrides go to the latter when ``in_chans`` changes). ``label`` names the weights in
    errors. Returns the model.
    """
    model_config = config["model"]
    rest = dict(overrides)
    adapt = {key: rest.pop(key) for key in ADAPTING_KEYS if key in rest and rest[key] != model_config.get(key)}
    if "in_chans" in adapt:
        check_channel_count(adapt["in_chans"])
        adapt.update({key: rest.pop(key) for key in ("mean", "std") if key in rest})
    model = build(_with_overrides(config, rest))
    load(model)
    for key, method in (("in_chans", "adapt_input_channels"), ("num_classes", "reset_classifier")):
        if key not in adapt:
            continue
        if not callable(getattr(model, method, None)):
            raise ConfigError(
                f"{label}: {type(model).__name__} cannot adapt its loaded weights to {key}={adapt[key]!r} (it has "
                f"no {method}()); leave {key} at the weights' value ({model_config.get(key)!r}) or build without "
                "weights"
            )
        if key == "in_chans":
            model.adapt_input_channels(adapt["in_chans"], mean=adapt.get("mean"), std=adapt.get("std"))
        else:
            model.reset_classifier(adapt["num_classes"])
    return model


def _with_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with ``overrides`` deep-merged into its ``model`` section (a new dict; validated by the build)."""
    config = dict(config)
    if overrides:
        config["model"] = merge_configs(config["model"], dict(overrides))
    return config


def _normalisation_follows_channels(model_config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` plus adapted per-channel ``mean``/``std`` when they change ``in_chans`` and leave those out.

    So that ``create_model("deq_mnist", in_chans=3)`` builds (the MNIST mean repeated for 3 channels) instead of
    failing on a 1-value mean; a scalar mean/std already fits any channel count.
    """
    overrides = dict(overrides)
    in_chans = overrides.get("in_chans")
    if in_chans is None or in_chans == model_config.get("in_chans"):
        return overrides
    check_channel_count(in_chans)
    for key in ("mean", "std"):
        values = model_config.get(key)
        if key not in overrides and isinstance(values, (list, tuple)):
            overrides[key] = adapt_channel_values(values, in_chans)
    return overrides


def zoo_pretrained_cfg(name: str) -> dict[str, Any]:
    """timm metadata of zoo model ``name`` beyond what the model itself gives (its ``_model_cfg``).

    ``architecture`` is the zoo name (what ``timm.create_model`` takes back); ``tag`` is None (one set of
    weights per zoo name, like a tagless timm entry); license, paper, the config's description; and where the
    pretrained index keeps the weights: ``hf_hub_id`` + ``hf_hub_filename``, else ``file`` (the shipped copy).
    """
    try:
        description = _own_meta(zoo_config_path(name)).get("description")
    except ConfigError:  # not config-backed (a plugin's factory function)
        description = None
    cfg: dict[str, Any] = {
        "architecture": name,
        "tag": None,
        "license": LICENSE,
        **PAPER_CFG,
        "description": description or f"lyadeq-zoo {__version__} model {name}",
    }
    entry = read_index().get(name)
    if entry and entry.get("hf_hub_id"):
        cfg.update(hf_hub_id=entry["hf_hub_id"], hf_hub_filename=entry["filename"])
    elif entry:
        cfg["file"] = str(shipped_folder(entry["local_path"]) / entry["filename"])
    return cfg


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Zoo model names matching ``pattern``; with ``pretrained=True`` only those with weights."""
    names = [n for n in list_components("model", pattern) if not inspect.isclass(get_component("model", n))]
    if pretrained:
        names = [n for n in names if has_pretrained(n)]
    return names


def _own_meta(path: Path) -> dict[str, Any]:
    """The ``meta`` section written in the config file itself (its bases are not read, nothing is validated)."""
    raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
    return raw.get("meta") or {}


def _zoo_entry(name: str, path: Path) -> Callable[..., torch.nn.Module]:
    def entry(pretrained: bool = False, cache_dir: str | Path | None = None, **overrides: Any) -> torch.nn.Module:
        if pretrained:

            def load(model: torch.nn.Module) -> None:
                load_pretrained_weights(model, name, cache_dir=cache_dir)

            model = _load_adapted(zoo_config(name), overrides, load=load, label=f"pretrained {name!r}")
        else:
            if "in_chans" in overrides:
                overrides = _normalisation_follows_channels(zoo_config(name)["model"], overrides)
            model = build_model(zoo_config(name, overrides))
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **zoo_pretrained_cfg(name)}
        return model

    # Only the file's own `meta` is read here: full loading validates against the registries,
    # which must not happen (nor trigger plugin discovery) at import time.
    meta = _own_meta(path)
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
