"""timm interop: every zoo model is also a timm model (``timm.create_model("lyadeq_mnist")``).

The zoo names are added to timm's own registry with ``timm.models.register_model``, so timm's
``create_model``, ``list_models``, ``is_model`` and ``list_pretrained`` see them. ``pretrained=True``
goes through our loader (pretrained index, sha256 check, strict safetensors loading).

Registration is lazy: importing lyadeq_zoo does not import timm (it takes seconds). If timm is already
imported, the names are registered at once; otherwise a one-shot import hook registers them right after
timm's own import finishes. Registering is idempotent, and :func:`register_timm_models` can be called
again to add zoo names registered later (e.g. from another configs folder).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from . import factory
from .hub import LICENSE, input_spec, load_pretrained_weights, read_index, shipped_folder
from .version import __version__

# timm's register_model records the defining module's default_cfgs and appends to its __all__.
default_cfgs: dict[str, dict[str, Any]] = {}
__all__ = ["install", "register_timm_models"]

_registered: dict[str, Callable[..., torch.nn.Module]] = {}


def _pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's metadata for zoo model ``name``: input geometry, identity normalisation, Hub id when published.

    mean/std are 0/1 because the models normalise inside: timm's data pipeline must feed [0, 1] images.
    """
    cfg: dict[str, Any] = {
        "mean": None,
        "std": None,
        "license": LICENSE,
        "paper_ids": "arXiv:2304.12707",
        "paper_name": "Lyapunov-Stable Deep Equilibrium Models",
        "origin_url": "https://arxiv.org/abs/2304.12707",
        "description": f"lyadeq-zoo {__version__} model {name}",
    }
    try:
        spec = input_spec(factory.zoo_config(name)["model"])
        chans = int(spec["in_chans"])
        size = spec["img_size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        cfg.update(
            input_size=(chans, int(h), int(w)),
            fixed_input_size=True,
            mean=(0.0,) * chans,
            std=(1.0,) * chans,
            num_classes=int(spec["num_classes"]),
            interpolation="bilinear",
            crop_pct=1.0,
        )
    except Exception:  # noqa: BLE001 - not config-backed or incomplete: register without geometry
        cfg.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    entry = read_index().get(name)
    if entry and entry.get("hf_hub_id"):
        # Metadata only (timm never downloads it itself: our entrypoint does, with the sha256 check).
        cfg.update(hf_hub_id=entry["hf_hub_id"], hf_hub_filename=entry["filename"])
    elif entry:
        cfg.update(file=str(shipped_folder(entry["local_path"]) / entry["filename"]))
    return cfg


def _make_entrypoint(name: str) -> Callable[..., torch.nn.Module]:
    def entrypoint(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: Any = None,
        cache_dir: Any = None,
        **overrides: Any,
    ) -> torch.nn.Module:
        # timm passes its own keyword arguments; the rest are model-config overrides, as in lz.create_model.
        del pretrained_cfg, pretrained_cfg_overlay
        model = factory.create_model(name, pretrained=False, **overrides)
        if pretrained:
            load_pretrained_weights(model, name, cache_dir=cache_dir)
        # What timm's data helpers (timm.data.resolve_model_data_config) read from a model.
        model.pretrained_cfg = dict(default_cfgs.get(name, {}), architecture=name)
        return model

    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"lyadeq-zoo model {name!r} through timm; same as lyadeq_zoo.create_model({name!r}, ...)."
    return entrypoint


def register_timm_models() -> list[str]:
    """Add every zoo model not yet known to timm to timm's registry; returns the names added.

    Imports timm. A zoo name that timm already uses for a model of its own is left to timm (warned).
    """
    from timm.models import is_model, register_model

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
        default_cfgs[name] = _pretrained_cfg(name)
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
