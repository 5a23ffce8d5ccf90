"""Per-sample stability diagnostics of a DEQ model at its equilibrium (exported as ``lz.stability_report``)."""

from __future__ import annotations

import torch
from torch import nn


def stability_report(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``model`` on images ``x`` ``(N, C, H, W)`` in [0, 1] and return per-sample ``(N,)`` tensors.

    Keys: ``nstep`` (solver iterations, int64), ``rel_residual`` (``||f(z*) - z*|| / (||f(z*)|| + 1e-8)`` at the
    returned z*); for Lyapunov models also ``lyapunov_value`` V(z*) and ``lyapunov_decrease``
    ``∇V(z*)ᵀF̂(z*) + c·V(z*)`` (<= 0 certifies the decrease condition at z*).

    The forward pass runs under ``torch.no_grad()``; the Lyapunov module computes ∇V in closed form (with
    autograd locally only for ``grad_method: autograd``).
    The model is used in its current mode (call ``model.eval()`` first for the deployed map: in train mode a
    BatchNorm model would also update its running statistics once). Works for any model that stores its last
    forward's diagnostics in ``model.last_info`` (as :class:`lyadeq_zoo.models.DEQClassifier` does).
    """
    if not hasattr(model, "last_info"):
        raise TypeError(
            f"{type(model).__name__} keeps no solver diagnostics (no .last_info attribute); stability_report "
            "needs a DEQ model such as lz.create_model('lyadeq_mnist')"
        )
    with torch.no_grad():
        model(x)
    info = dict(model.last_info)
    missing = [k for k in ("nstep", "rel_residual") if k not in info]
    if missing:
        raise RuntimeError(f"{type(model).__name__}.last_info lacks {missing} after a forward pass")
    return {k: v.detach().clone() for k, v in info.items()}
