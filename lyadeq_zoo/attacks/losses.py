"""The per-sample losses an attack maximises: ``ce``, ``cw`` (the margin) and ``dlr``.

Each maps logits ``(N, K)`` and labels ``(N,)`` int64 to a loss ``(N,)``; higher means closer to (or further
past) a misclassification.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "cw", "dlr")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{j != y} z_j - z_y`` per sample, shape (N,); > 0 exactly when the sample is misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.amax(1) - true


def attack_loss(name: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample loss (N,) that an attack maximises.

    ``ce``: cross-entropy. ``cw``: the Carlini-Wagner margin ``max_{j!=y} z_j - z_y`` (no clamp, so it
    keeps pushing past the decision boundary). ``dlr``: Croce & Hein's difference of logits ratio
    ``-(z_y - max_{j!=y} z_j) / (z_(1) - z_(3))`` with ``z_(i)`` the sorted logits (needs >= 3 classes),
    invariant to shifting and scaling the logits.
    """
    if name == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if name == "cw":
        return margin(logits, y)
    if name == "dlr":
        if logits.shape[1] < 3:
            raise ValueError("the dlr loss needs at least 3 classes; use loss='ce' or 'cw'")
        ordered = logits.sort(dim=1, descending=True).values
        return margin(logits, y) / (ordered[:, 0] - ordered[:, 2] + 1e-12)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
