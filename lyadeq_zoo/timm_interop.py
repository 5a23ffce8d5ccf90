"""timm interop: every zoo model is also a timm model (``timm.create_model("lyadeq_mnist")``).

The zoo names are added to timm's own registry with ``timm.models.register_model``, so timm's
``create_model``, ``list_models``, ``is_model`` and ``list_pretrained`` see them. ``pretrained=True``
goes through our loader (pretrained index, sha256 check, strict safetensors loading); with it, ``num_classes``
and ``in_chans`` adapt the loaded model as timm does (the classifier is reset, the first layer adapted; see
:mod:`lyadeq_zoo.factory`). The models keep timm's model contract (``pretrained_cfg``, ``num_features``,
``forward_features``, ``forward_head``, ``reset_classifier``; :class:`lyadeq_zoo.models.DEQClassifier`).
TorchScript, torch.fx and ``features_only`` are not offered: a solver loop cannot be traced.

Registration is lazy: importing lyadeq_zoo does not import timm (it takes seconds). If timm is already
imported, the names are registered at once; otherwise a one-shot import hook registers them right after
timm's own import finishes. Registering is idempotent, and :func:`register_timm_models` can be called
again to add zoo names registered later (e.g. from another configs folder).
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from . import factory
from .errors import ConfigError

# timm's register_model records the defining module's default_cfgs and appends to its __all__.
default_cfgs: dict[str, dict[str, Any]] = {}
__all__ = ["install", "register_timm_models"]

_registered: dict[str, Callable[..., torch.nn.Module]] = {}

# timm options of timm's own architectures that mean nothing for a DEQ: refused (when set) with the reason.
_TIMM_ONLY_OPTIONS = {
    "features_only": "a DEQ has no feature pyramid (its state is one vector); use num_classes=0 or forward_features",
    "global_pool": "a DEQ has no global pooling (its state is an (N, width) vector, not a feature map)",
    "drop_rate": "these models have no dropout",
    "drop_path_rate": "these models have no stochastic depth",
}


def _pretrained_cfg(name: str, fields: set[str]) -> dict[str, Any]:
    """timm's registry cfg of zoo model ``name``: the ``pretrained_cfg`` its freshly built model carries.

    The model is built once, under a forked RNG (registering never moves the caller's random stream). A name
    whose model does not build (a broken plugin config) gets the zoo metadata only; creating it then raises
    the real error. ``fields``: the keys timm's ``PretrainedCfg`` takes (others are dropped).
    """
    try:
        with torch.random.fork_rng(devices=[]):
            cfg = dict(factory.create_model(name).pretrained_cfg)
    except Exception:  # noqa: BLE001 - not buildable now: register without geometry
        cfg = {**factory.zoo_pretrained_cfg(name), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    return {key: value for key, value in cfg.items() if key in fields}


def _make_entrypoint(name: str) -> Callable[..., torch.nn.Module]:
    def entrypoint(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: Any = None,
        cache_dir: Any = None,
        **overrides: Any,
    ) -> torch.nn.Module:
        # timm passes its own keyword arguments; the rest are model-config overrides, as in lz.create_model
        # (num_classes / in_chans with pretrained=True adapt the loaded model, as timm does).
        if pretrained_cfg is not None or pretrained_cfg_overlay:
            raise ConfigError(
                f"timm model {name!r}: zoo models have no pretrained tags and take no pretrained_cfg(_overlay): "
                "their weights come only from the zoo's sha256-checked pretrained index; load other weights "
                "with lyadeq_zoo.create_model('local-dir:PATH') or 'hf-hub:org/repo'"
            )
        for option, reason in _TIMM_ONLY_OPTIONS.items():
            if option in overrides and (option == "global_pool" or overrides[option]):
                raise ConfigError(f"timm option {option}={overrides[option]!r} does not apply to {name!r}: {reason}")
            overrides.pop(option, None)
        placement = {key: overrides.pop(key) for key in ("device", "dtype") if key in overrides}
        if cache_dir is not None:
            overrides["cache_dir"] = cache_dir  # zoo entries pass it to the Hub download
        model = factory.create_model(name, pretrained=pretrained, **overrides)
        if not hasattr(model, "pretrained_cfg"):  # a plugin's model: timm's data helpers need one
            model.pretrained_cfg = dict(default_cfgs.get(name, {}), architecture=name)
        return model.to(**placement) if placement else model

    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"lyadeq-zoo model {name!r} through timm; same as lyadeq_zoo.create_model({name!r}, ...)."
    return entrypoint


def register_timm_models() -> list[str]:
    """Add every zoo model not yet known to timm to timm's registry; returns the names added.

    Imports timm. A zoo name that timm already uses for a model of its own is left to timm (warned).
    """
    from timm.models import PretrainedCfg, is_model, register_model

    fields = {field.name for field in dataclasses.fields(PretrainedCfg)}
    added = []
    for name in factory.list_models():
        if name in _registered:
            continue
        if is_model(name):
            warnings.warn(
                f"timm already has a model named {name!r}; the zoo model of that name is not added to timm "
                f"(use lyadeq_zoo.create_model({name!r}))",
                stacklevel=2,
            )
            continue
        entrypoint = _make_entrypoint(name)
        default_cfgs[name] = _pretrained_cfg(name, fields)
        globals()[name] = entrypoint  # register_model lists it in this module's __all__
        register_model(entrypoint)
        _registered[name] = entrypoint
        added.append(name)
    return added


class _TimmImportHook(importlib.abc.MetaPathFinder):
    """Runs :func:`register_timm_models` once, right after ``import timm`` completes."""

    def __init__(self) -> None:
        self._finding = False

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> Any:
        if fullname != "timm" or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec("timm")
        finally:
            self._finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            _uninstall_hook()
            try:
                register_timm_models()
            except Exception as err:  # noqa: BLE001 - never break `import timm` for the user
                warnings.warn(f"lyadeq_zoo could not add its models to timm: {err}", stacklevel=2)

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


_hook = _TimmImportHook()


def _uninstall_hook() -> None:
    if _hook in sys.meta_path:
        sys.meta_path.remove(_hook)


def install() -> None:
    """Register the zoo models with timm now if timm is imported, else once it is (idempotent)."""
    if "timm.models" in sys.modules:
        register_timm_models()
    elif _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)


install()
