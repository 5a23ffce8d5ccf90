"""How a white-box attack queries the model: its input gradient, the DEQ backward used for it, its labels.

``grad_mode`` lets an attack differentiate a DEQ model through another backward than the model's own
(``"ift"``, ``"unroll"``, ``"phantom"`` or a backward spec dict), via
:func:`lyadeq_zoo.deq.layer.override_backward`; the forward pass, and so what the model predicts, is unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..deq.layer import DEQLayer, override_backward
from ..errors import AttackNotApplicable
from .losses import attack_loss

GRAD_MODE_SHORTHANDS = ("ift", "unroll", "phantom")


def normalize_grad_mode(grad_mode: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """A backward spec dict (``{"type": "unroll"}``) from a shorthand string, a dict, or None."""
    if grad_mode is None:
        return None
    if isinstance(grad_mode, str):
        return {"type": grad_mode}
    if isinstance(grad_mode, dict) and "type" in grad_mode:
        return dict(grad_mode)
    raise ValueError(
        f"grad_mode must be None, one of {', '.join(GRAD_MODE_SHORTHANDS)} or a backward spec dict with a "
        f"'type' key, got {grad_mode!r}"
    )


def has_deq_layer(model: nn.Module) -> bool:
    """Whether ``model`` holds a :class:`lyadeq_zoo.deq.layer.DEQLayer` (whose gradient can be swapped)."""
    return any(isinstance(m, DEQLayer) for m in model.modules())


@contextlib.contextmanager
def gradient_mode(model: nn.Module, spec: dict[str, Any] | None) -> Iterator[None]:
    """Run ``model`` with every DEQ layer's backward replaced by ``spec`` (no-op for ``None``)."""
    if spec is None:
        yield
        return
    if not has_deq_layer(model):
        raise AttackNotApplicable(
            f"grad_mode={spec!r} swaps the backward of DEQ layers, but the model has none; "
            "drop grad_mode for this model"
        )
    with override_backward(model, spec):
        yield


def input_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d loss / d x summed over the batch, per-sample loss (N,), logits (N, K)), all detached.

    A model that cuts its input out of the graph (``x.detach()``, quantisation, ``no_grad``) gets a zero
    gradient here instead of an error: that is what an attacker would see.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        per_sample = attack_loss(loss, logits, y)
        if per_sample.requires_grad:
            (grad,) = torch.autograd.grad(per_sample.sum(), x, allow_unused=True)
        else:
            grad = None
    if grad is None:
        grad = torch.zeros_like(x)
    # NaN gradients (e.g. from a solver that diverged) give no direction; treat them as zero.
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    return grad.detach(), per_sample.detach(), logits.detach()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Predicted labels (N,) of ``model`` on ``x`` without building a graph."""
    if batch_size is None or x.shape[0] <= batch_size:
        return model(x).argmax(1)
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])
