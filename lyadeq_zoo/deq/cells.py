"""DEQ cells (kind ``cell``): ``f(z, x)`` whose fixed point ``z* = f(z*, x)`` the DEQ layer finds.

``paper_mlp`` is the paper's eq. 7 on vector states ``(N, width)``:

    y = W2 · N1(ReLU(W1 · z + b1)) + b2,      f(z, x) = N2(ReLU(x + y))

with ``N1``, ``N2`` BatchNorm in the paper (``norm: batch``), or a per-sample LayerNorm / nothing.

BatchNorm inside a fixed-point iteration
----------------------------------------
A solver calls f tens of times per forward pass. Plain ``nn.BatchNorm1d`` in train mode would (a) update
its running statistics at every call, so they would average solver iterates (mostly far from z*) and move
by ``momentum`` tens of times per step; and (b) if it used running statistics that change between calls,
the map being solved would change during the solve. Our treatment (:class:`FixedPointBatchNorm`):

* **train mode**: f normalises with the statistics of the batch it is given and never writes the running
  buffers. For a fixed batch ``x`` this is one fixed map of the whole batch state ``Z -> f(Z, X)``, the same
  at every solver iteration and at the final differentiable application (so IFT / phantom gradients see
  the map that was solved), and gradients flow through the batch statistics as in ordinary BN training.
  Samples are coupled through the statistics, so the solver must treat the batch as one state: the DEQ
  layer sees the BatchNorm in train mode and runs the solver with whole-batch stopping (no sample frozen, one
  iterate returned for all samples), so the reported residuals are those of the returned batch.
* **running statistics** are updated exactly once per model forward, from the equilibrium: the model calls
  :meth:`PaperMLPCell.update_running_stats` with ``(z*, x)`` after the solve (no grad). So the eval-mode
  statistics describe the states the network is actually at, not the solver's transients.
* **eval mode**: the running statistics are used, so f is a per-sample map that does not depend on the
  batch, and it is the same map at every call.

The alternative ``norm: layer`` (per-sample LayerNorm) has no batch coupling and no train/eval difference at
all, at the price of departing from the paper; ``norm: none`` drops normalisation.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register

NORMS = ("batch", "layer", "none")


class FixedPointBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d for use inside a fixed-point map: train mode never writes the running buffers.

    Input ``(N, C)``. In train mode it normalises with batch statistics (like BatchNorm1d) but leaves
    ``running_mean``/``running_var``/``num_batches_tracked`` untouched; :meth:`record` performs the single
    momentum update per forward pass. Eval mode uses the running statistics. The state_dict layout is that of
    ``nn.BatchNorm1d``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self._recording = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if x.shape[0] < 2:
            raise ValueError(
                "BatchNorm in train mode needs at least 2 samples per batch to estimate statistics, got "
                f"input {tuple(x.shape)}; use a larger batch, call model.eval(), or set the cell's norm: layer"
            )
        if self._recording:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, True, momentum, self.eps
            )
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def _norm(kind: str, features: int) -> nn.Module:
    if kind == "batch":
        return FixedPointBatchNorm(features)
    if kind == "layer":
        return nn.LayerNorm(features)
    return nn.Identity()


@register("cell", "paper_mlp")
class PaperMLPCell(nn.Module):
    """Eq. 7: ``f(z, x) = N2(ReLU(x + W2·N1(ReLU(W1·z + b1)) + b2))`` on states ``z, x`` of shape ``(N, width)``.

    ``hidden``: width of the inner layer (default ``width``). ``norm``: ``batch`` (the paper; see the module
    docstring for how it behaves in a fixed-point solve), ``layer`` (per-sample) or ``none``.
    ``out_scale``: W2 starts at ``out_scale`` times its default initialisation, so the map starts close to
    ``f(z, x) = N2(ReLU(x + b2))`` (nearly constant in z: a well-conditioned fixed point; DEQ practice).
    """

    __lyadeq_zoo_supplied__ = ("width",)

    def __init__(
        self,
        width: int,
        hidden: int | None = None,
        norm: Literal["batch", "layer", "none"] = "batch",
        out_scale: float = 0.1,
    ):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"paper_mlp norm must be one of {', '.join(NORMS)}, got {norm!r}")
        hidden = int(hidden or width)
        self.width, self.norm = int(width), norm
        self.fc1 = nn.Linear(width, hidden)
        self.norm1 = _norm(norm, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.norm2 = _norm(norm, width)
        with torch.no_grad():
            self.fc2.weight.mul_(out_scale)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``f(z, x)``: ``z``, ``x`` ``(N, width)`` -> ``(N, width)``."""
        y = self.fc2(self.norm1(F.relu(self.fc1(z))))
        return self.norm2(F.relu(x + y))

    @torch.no_grad()
    def update_running_stats(self, z: torch.Tensor, x: torch.Tensor) -> None:
        """One momentum update of every BatchNorm's running statistics from the batch at ``(z, x)``.

        The model calls this once per train-mode forward with the equilibrium ``z*``; a no-op in eval mode or
        without BatchNorm.
        """
        bns = [m for m in self.modules() if isinstance(m, FixedPointBatchNorm)]
        if not self.training or not bns:
            return
        for bn in bns:
            bn._recording = True
        try:
            self(z, x)
        finally:
            for bn in bns:
                bn._recording = False
