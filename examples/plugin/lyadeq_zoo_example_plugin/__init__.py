"""An example lyadeq-zoo plugin: one solver and one head, registered through entry points only.

Nothing here imports lyadeq_zoo: a plugin only has to follow the component contracts.
"""

from __future__ import annotations

import torch
from torch import nn


def damped_picard(
    f, z0: torch.Tensor, *, max_iter: int = 50, tol: float = 1e-4, damping: float = 0.5
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Damped fixed-point iteration ``z <- (1 - damping) z + damping f(z)`` with per-sample stopping.

    Args: ``f`` maps (N, ...) -> (N, ...); ``z0`` (N, ...). Returns ``z_star`` and per-sample
    ``nstep`` (int64) and ``rel_residual`` ``||f(z) - z|| / (||f(z)|| + 1e-8)`` at ``z_star``.
    """
    z = z0
    n = z0.shape[0]
    nstep = torch.zeros(n, dtype=torch.long, device=z0.device)
    done = torch.zeros(n, dtype=torch.bool, device=z0.device)
    fz = f(z)
    for step in range(1, max_iter + 1):
        rel = (fz - z).flatten(1).norm(dim=1) / (fz.flatten(1).norm(dim=1) + 1e-8)
        done = done | (rel <= tol)
        if bool(done.all()):
            break
        keep = done.view(-1, *([1] * (z.dim() - 1)))
        z = torch.where(keep, z, (1 - damping) * z + damping * fz)
        nstep = torch.where(done, nstep, torch.full_like(nstep, step))
        fz = f(z)
    rel = (fz - z).flatten(1).norm(dim=1) / (fz.flatten(1).norm(dim=1) + 1e-8)
    return z, {"nstep": nstep, "rel_residual": rel}


class CosineHead(nn.Module):
    """Cosine-similarity classifier: logits = scale * cos(z, w_k). (N, in_features) -> (N, num_classes)."""

    __lyadeq_zoo_supplied__ = ("in_features", "num_classes")

    def __init__(self, in_features: int, num_classes: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, in_features) / in_features**0.5)
        self.scale = scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * nn.functional.normalize(z, dim=1) @ nn.functional.normalize(self.weight, dim=1).T
