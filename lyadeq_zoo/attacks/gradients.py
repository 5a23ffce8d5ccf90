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


def input_gradient_rows(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str, active: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`input_gradient` computed on the rows of ``x`` where ``active`` ((N,) bool) holds, scattered back.

    Rows outside ``active`` get a zero gradient (a sign step leaves them where they are), loss ``-inf`` and zero
    logits; callers that stop on samples already fooled never read them. The model sees the active rows only,
    which is what saves the time; each row's result is what it gets in the full batch wherever the model treats
    samples independently (eval-mode BatchNorm, per-sample solver stopping). Logits are None when no row is
    active.
    """
    rows = active.nonzero().squeeze(1)
    if rows.numel() == x.shape[0]:
        return input_gradient(model, x, y, loss)
    grad = torch.zeros_like(x)
    per_sample = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
    if rows.numel() == 0:
        return grad, per_sample, None
    grad_rows, loss_rows, logits_rows = input_gradient(model, x[rows], y[rows], loss)
    grad[rows] = grad_rows
    per_sample[rows] = loss_rows.to(per_sample.dtype)
    logits = logits_rows.new_zeros((x.shape[0], logits_rows.shape[1]))
    logits[rows] = logits_rows
    return grad, per_sample, logits


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Predicted labels (N,) of ``model`` on ``x`` without building a graph."""
    if batch_size is None or x.shape[0] <= batch_size:
        return model(x).argmax(1)
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])
