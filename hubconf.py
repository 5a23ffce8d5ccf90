"""torch.hub entrypoints: one per zoo model, generated from lyadeq-zoo's model registry.

    torch.hub.list("<owner>/lyadeq-zoo:main")
    model = torch.hub.load(repo_dir, "lyadeq_mnist", source="local")   # a local checkout
    model = torch.hub.load("<owner>/lyadeq-zoo", "lyadeq_mnist", pretrained=True)

Each entrypoint takes ``pretrained`` (load the published, sha256-checked weights) and keyword overrides
that merge into the model config, exactly like ``lyadeq_zoo.create_model``.
"""

from __future__ import annotations

from collections.abc import Callable as _Callable
from pathlib import Path as _Path
from typing import Any as _Any

from torch import nn as _nn

dependencies = ["torch", "torchvision", "timm", "safetensors", "huggingface_hub", "yaml", "numpy"]

# torch.hub puts this folder first on sys.path, so this imports the checkout's own lyadeq_zoo.
_REPO = _Path(__file__).resolve().parent
import lyadeq_zoo as _lz  # noqa: E402

if _Path(_lz.__file__).resolve().parent.parent != _REPO:
    import warnings as _warnings

    _warnings.warn(
        f"hubconf in {_REPO} uses the lyadeq_zoo already imported from {_Path(_lz.__file__).parent}; its zoo "
        "may differ from this checkout's (start a fresh Python process to use the checkout's)",
        stacklevel=2,
    )


def _entrypoint(name: str) -> _Callable[..., _nn.Module]:
    def entrypoint(pretrained: bool = False, **overrides: _Any) -> _nn.Module:
        return _lz.create_model(name, pretrained=pretrained, **overrides)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    doc = _lz.get_component("model", name).__doc__ or name
    entrypoint.__doc__ = (
        f"{doc.strip()}\n\nReturns a torch.nn.Module: images (N, C, H, W) in [0, 1] -> logits (N, num_classes)."
    )
    return entrypoint


for _name in _lz.list_models():
    globals()[_name] = _entrypoint(_name)
