"""Measurements taken on the model itself for the masking checks: whether its input gradient carries any
signal, and whether its forward pass calls autograd (a "dynamic defense" in AutoAttack's terms)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import attack_loss

_AUTOGRAD_NAMES = {"grad", "backward", "vjp", "jvp", "jacobian", "hessian", "jacrev", "jacfwd", "vmap_grad"}
_AUTOGRAD_FILES = ("torch/autograd/", "torch/_tensor.py", "torch/_functorch/", "torch/func/")


def clean_correct_inputs(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, limit: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples among the first ``limit`` of ``batch`` that ``model`` classifies correctly, on ``device``:
    images (m, C, H, W) float and labels (m,) long, ``m`` possibly 0."""
    x, y = batch[0][:limit].to(device).float(), batch[1][:limit].to(device).long()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    return x[correct], y[correct]


def useless_gradient_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> float:
    """Fraction of the samples (in [0, 1]) whose input gradient of attack loss ``loss`` (``cw``, ``ce`` ...)
    is all zero or not finite; 1.0 when the loss is not connected to the input at all."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        value = attack_loss(loss, model(xg), y)
        grad = torch.autograd.grad(value.sum(), xg, allow_unused=True)[0] if value.requires_grad else None
    if grad is None:
        return 1.0
    flat = grad.flatten(1)
    useless = (flat.abs().amax(1) == 0) | ~torch.isfinite(flat).all(1)
    return float(useless.float().mean())


def autograd_calls_in_forward(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Autograd entry points (``torch.autograd.grad``, ``Tensor.backward`` ...) that one forward pass of
    ``model`` on ``x`` calls, as ``"torch.autograd.grad from file.py:line"`` strings (empty if none)."""
    found: dict[str, None] = {}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        if code.co_name in _AUTOGRAD_NAMES and any(p in code.co_filename.replace("\\", "/") for p in _AUTOGRAD_FILES):
            caller = frame.f_back
            while caller is not None and "torch/" in caller.f_code.co_filename.replace("\\", "/"):
                caller = caller.f_back
            origin = f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}" if caller else "?"
            found[f"torch {code.co_name} from {origin}"] = None

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        with torch.enable_grad():
            model(x)
    finally:
        sys.setprofile(previous)
    return list(found)
