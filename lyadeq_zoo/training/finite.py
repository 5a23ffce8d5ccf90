"""Non-finite values in a run: the per-step check of the loss and the gradient, and the scan of checkpoint tensors.

A NaN or inf loss or gradient is caught at the step it happens, before the optimizer step, so the weights never
take a poisoned value and no checkpoint after it is written. The per-step cost is one gradient norm (one
``torch._foreach_norm`` over all gradients, the same one ``train.grad_clip`` needs) and one host sync; under
DDP also one ``all_reduce`` of ``world_size + 1`` numbers, so that every rank stops at the same step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from .distributed import DistContext, all_reduce_sum


def grad_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of ``grads`` (0-dim float tensor; 0 for no gradients), computed the way
    ``torch.nn.utils.clip_grad_norm_`` computes it (per-tensor ``_foreach_norm``, then the norm of those)."""
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(list(grads), 2.0)
    return torch.linalg.vector_norm(torch.stack(norms), 2.0)


@torch.no_grad()
def clip_grads(grads: Sequence[torch.Tensor], max_norm: float, total_norm: torch.Tensor) -> None:
    """Scale ``grads`` in place so that their global norm ``total_norm`` is at most ``max_norm`` (the arithmetic
    of ``clip_grad_norm_``, reusing the norm already computed)."""
    if not grads:
        return
    coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    torch._foreach_mul_(list(grads), coef.to(grads[0].device))


def nonfinite_flags(loss: torch.Tensor, total_norm: torch.Tensor, ctx: DistContext) -> tuple[list[int], bool]:
    """``(ranks whose loss is NaN / inf, whether the gradient norm is)``, the same on every rank.

    One host sync; under DDP one ``all_reduce`` (the gradients are already averaged over ranks, so the norm
    agrees everywhere, but each rank has its own loss).
    """
    flags = torch.zeros(ctx.world_size + 1, dtype=torch.float64, device=ctx.device)
    flags[ctx.rank] = (~torch.isfinite(loss.detach())).to(ctx.device, torch.float64)
    flags[-1] = (~torch.isfinite(total_norm)).to(ctx.device, torch.float64)
    values = all_reduce_sum(ctx, flags).tolist()
    return [rank for rank, bad in enumerate(values[:-1]) if bad], bool(values[-1])


def count_nonfinite(tensor: torch.Tensor) -> tuple[int, int]:
    """``(NaN count, inf count)`` of a tensor (0, 0 for integer tensors)."""
    if not tensor.is_floating_point():
        return 0, 0
    return int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names (in order) of the floating-point tensors of ``tensors`` that hold a NaN or inf."""
    return [
        name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def nonfinite_counts(tensor: torch.Tensor) -> str:
    """``3 NaN, 0 inf of 4096 values``."""
    nan, inf = count_nonfinite(tensor)
    return f"{nan} NaN, {inf} inf of {tensor.numel()} values"


def gradient_problem(named_parameters: Iterable[tuple[str, nn.Parameter]]) -> str:
    """Which parameters' gradients are non-finite: ``the gradient of 'a' (...) (2 of 14 parameters: a, b)``."""
    with_grad = [(name, p.grad) for name, p in named_parameters if p.grad is not None]
    bad = [(name, g) for name, g in with_grad if not bool(torch.isfinite(g).all())]
    if not bad:  # only the norm overflowed: every gradient is finite but their norm is not
        return f"the global gradient norm overflows (every one of the {len(with_grad)} gradients is finite)"
    first, grad = bad[0]
    listing = ", ".join(name for name, _ in bad[:5]) + (", ..." if len(bad) > 5 else "")
    return (
        f"the gradient of parameter {first!r} is not finite ({nonfinite_counts(grad)}; {len(bad)} of "
        f"{len(with_grad)} parameters have non-finite gradients: {listing})"
    )
