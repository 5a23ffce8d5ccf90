"""Learned Lyapunov functions and the stabilising projection (kind ``lyapunov``), paper eq. 4-6 and 8.

``icnn`` follows Kolter & Manek (2019): an input-convex network ``g`` gives the convex, positive definite

    V(z) = s(g(z) - g(0)) + eps·||z||²            (per sample; s = smooth ReLU of eq. 8)

and a dynamics ``F`` is projected so that V decreases at rate ``c`` wherever it would not:

    phi(z) = ∇V(z)ᵀF(z) + c·V(z),   F̂(z) = F(z) - ∇V(z)·relu(phi(z)) / ||∇V(z)||²

Everything is per sample (no batch sums in V, in the inner product or in the normaliser), and ∇V stays in the
autograd graph: training updates the ICNN through it, and a white-box attack differentiates through the projection
(no gradient masking by construction). Defects of public code that this avoids are listed in docs/method.md.

How ∇V is computed (``grad_method``):

* ``analytic`` (default): an explicit backward pass through the ICNN written with ordinary tensor ops (chain rule
  through the layers, ``s'(t) = clamp(t, 0, d) / d``), so ∇V is a plain differentiable function of z and of the
  parameters. Autograd differentiates that expression for training and attacks (second-order terms included), and
  the forward pass makes no nested ``torch.autograd.grad`` call (no double backward when training).
* ``autograd``: ``torch.autograd.grad(V.sum(), z, create_graph=True)`` inside the forward (the reference; equal to
  the analytic route up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register


def smooth_relu(t: torch.Tensor, d: float) -> torch.Tensor:
    """Eq. 8: 0 for t <= 0, t²/(2d) for 0 < t < d, t - d/2 for t >= d. Convex, non-decreasing, C¹.

    Written with clamps (not branches) so that first and second derivatives are exact everywhere:
    ``min(relu(t), d)²/(2d) + relu(t - d)``.
    """
    return t.clamp(min=0.0, max=d).square() / (2.0 * d) + (t - d).clamp(min=0.0)


def smooth_relu_grad(t: torch.Tensor, d: float) -> torch.Tensor:
    """``s'(t)`` of :func:`smooth_relu`: 0 for t <= 0, t/d for 0 < t < d, 1 for t >= d (elementwise, same shape).

    Under autograd its own derivative is 1/d inside (0, d) and 0 elsewhere, which is also what double backward
    through :func:`smooth_relu` gives. (At exactly t = d torch's ``clamp`` backward gives s'(d) = 0 instead of the
    true 1; the two routes can differ only on that measure-zero set.)
    """
    return t.clamp(min=0.0, max=d) / d


def _smooth_relu_with_grad(t: torch.Tensor, d: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s(t), s'(t))`` sharing one clamp (fewer autograd nodes than computing them apart)."""
    c = t.clamp(min=0.0, max=d)
    return c.square() / (2.0 * d) + F.relu(t - d), c / d


GRAD_METHODS = ("analytic", "autograd")


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


@register("lyapunov", "icnn")
class ICNNLyapunov(nn.Module):
    """Lyapunov function from an input-convex network, with the per-sample projection of eq. 5-6.

    ICNN ``g``: ``q1 = s(W0 z + b0)``, ``q_{i+1} = s(U_i q_i + W_i z + b_i)`` for each entry of ``hidden``,
    then a scalar output ``g = U_L q_L + W_L z + b_L``. Non-negativity of ``U_i`` is a reparametrisation:
    ``U_i = softplus(R_i)`` with ``R_i`` free, so any optimiser keeps g convex. ``R_i`` starts near
    ``softplus⁻¹(1/fan_in)`` so that sums over the hidden units do not blow up with the width.

    Defaults follow the paper's first author (``c = 0.9, eps = 1e-3, d = 0.1``, ICNN ``[64, 64]``); Kolter &
    Manek's library defaults are ``c = 0.01, eps = 0.01, d = 1.0``. ``c`` is the guaranteed exponential decay
    rate of V along the projected dynamics; ``eps`` makes V strictly positive definite; ``d`` is the width of the
    quadratic part of the smooth ReLU. ``grad_method`` chooses how ∇V is computed (see the module docstring):
    ``"analytic"`` (default, an explicit backward pass) or ``"autograd"`` (nested autograd call); both give the same
    values and gradients up to float rounding.

    ``width`` (supplied by the model) is the flattened state size; states may have any shape ``(N, ...)``.
    """

    __lyadeq_zoo_supplied__ = ("width",)

    def __init__(
        self,
        width: int,
        hidden: Sequence[int] = (64, 64),
        d: float = 0.1,
        eps: float = 1e-3,
        c: float = 0.9,
        grad_method: Literal["analytic", "autograd"] = "analytic",
    ):
        super().__init__()
        if grad_method not in GRAD_METHODS:
            raise ValueError(f"icnn grad_method must be one of {', '.join(GRAD_METHODS)}, got {grad_method!r}")
        self.grad_method = grad_method
        hidden = [int(h) for h in hidden]
        if not hidden or min(hidden) < 1:
            raise ValueError(f"icnn hidden must list at least one positive layer size, got {hidden!r}")
        if d <= 0 or eps <= 0 or c < 0:
            raise ValueError(f"icnn needs d > 0, eps > 0 (positive definiteness) and c >= 0; got {d=}, {eps=}, {c=}")
        self.width, self.d, self.eps, self.c = int(width), float(d), float(eps), float(c)
        sizes = [*hidden, 1]
        self.W = nn.ModuleList(nn.Linear(self.width, n) for n in sizes)  # input-injection layers (free sign)
        self.U_raw = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            start = _inverse_softplus(1.0 / fan_in)
            self.U_raw.append(nn.Parameter(torch.empty(fan_out, fan_in).uniform_(start - 0.5, start + 0.5)))

    def positive_weights(self) -> list[torch.Tensor]:
        """The non-negative ``U_i = softplus(R_i)``, ``(fan_out, fan_in)`` each; compute once per forward pass."""
        return [F.softplus(raw) for raw in self.U_raw]

    def g(self, z: torch.Tensor, weights: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """The ICNN ``(N, width) -> (N,)``, convex in z. ``weights``: :meth:`positive_weights` if already computed."""
        return self._g_and_slopes(z, self.positive_weights() if weights is None else weights)[0]

    def _g_and_slopes(
        self, z: torch.Tensor, weights: Sequence[torch.Tensor], slopes: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(g(z) (N,), [s'(pre-activation) of each hidden layer (N, hidden_i)] if slopes else [])``."""
        pre = self.W[0](z)
        out = []
        for i, u in enumerate(weights):
            if slopes:
                q, slope = _smooth_relu_with_grad(pre, self.d)
                out.append(slope)
            else:
                q = smooth_relu(pre, self.d)
            pre = F.linear(q, u) + self.W[i + 1](z)
        return pre.squeeze(-1), out

    def g_at_zero(self, weights: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``g(0)`` as a 0-d tensor: with z = 0 only the biases enter (no batch, no input products)."""
        weights = self.positive_weights() if weights is None else weights
        pre = self.W[0].bias
        for i, u in enumerate(weights):
            pre = F.linear(smooth_relu(pre, self.d), u) + self.W[i + 1].bias
        return pre.squeeze(-1)

    def value(self, z: torch.Tensor) -> torch.Tensor:
        """``V(z) = s(g(z) - g(0)) + eps·||z||²`` per sample: ``(N, ...) -> (N,)``, V(0) = 0, V > 0 elsewhere."""
        flat = self._flat(z)
        weights = self.positive_weights()
        return smooth_relu(self.g(flat, weights) - self.g_at_zero(weights), self.d) + self.eps * flat.square().sum(1)

    def grad_value(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(V(z) (N,), ∇V(z) (N, ...))``, both differentiable when autograd is on.

        When autograd is on, gradients reach the ICNN parameters and everything upstream of z (the input image, for
        attacks) through ∇V, in train and eval mode. Under ``torch.no_grad()`` both are returned without a graph.
        """
        if self.grad_method == "autograd":
            return self._grad_value_autograd(z)
        return self._grad_value_analytic(z)

    def _grad_value_analytic(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # V = s(t) + eps·||z||² with t = g(z) - g(0)  =>  ∇V = s'(t)·∇g(z) + 2·eps·z, and ∇g by reverse-mode chain
        # rule written out: g = U_L q_L + W_L z + b_L, q_i = s(pre_i), pre_i = U_{i-1} q_{i-1} + W_i z + b_i.
        flat = self._flat(z)
        weights = self.positive_weights()
        g, slopes = self._g_and_slopes(flat, weights, slopes=True)
        s_t, slope_t = _smooth_relu_with_grad(g - self.g_at_zero(weights), self.d)
        v = s_t + self.eps * flat.square().sum(1)
        delta = weights[-1] * slopes[-1]  # dg/d(pre-activation) of the last hidden layer (N, h_L)
        grad_g = self.W[-1].weight + delta @ self.W[-2].weight
        for i in range(len(slopes) - 2, -1, -1):
            delta = (delta @ weights[i]) * slopes[i]
            grad_g = grad_g + delta @ self.W[i].weight
        gv = slope_t.unsqueeze(1) * grad_g + (2.0 * self.eps) * flat
        return v, gv.view_as(z)

    def _grad_value_autograd(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # ∇V keeps its graph (create_graph) and z its own history; under no_grad it is computed locally, detached.
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            zz = z if (keep_graph and z.requires_grad) else z.detach().requires_grad_(True)
            v = self.value(zz)
            (gv,) = torch.autograd.grad(v.sum(), zz, create_graph=keep_graph)
        if not keep_graph:
            v = v.detach()
        return v, gv

    def project(self, z: torch.Tensor, F_z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Project the dynamics ``F(z)`` so that ``∇VᵀF̂ + c·V <= 0`` per sample (eq. 6).

        ``z``, ``F_z``: ``(N, ...)`` (the same shape). Returns ``F̂`` with that shape and an info dict of
        per-sample ``(N,)`` tensors: ``lyapunov_value`` V(z) and ``lyapunov_decrease`` ∇V(z)ᵀF̂(z) + c·V(z)
        (<= 0 up to rounding certifies the decrease condition; exactly 0 where the projection was active).
        """
        if z.shape != F_z.shape:
            raise ValueError(f"project(z, F): z {tuple(z.shape)} and F {tuple(F_z.shape)} must have the same shape")
        v, gv = self.grad_value(z)
        g_flat, f_flat = self._flat(gv), self._flat(F_z)
        phi = (g_flat * f_flat).sum(1) + self.c * v
        sq = g_flat.square().sum(1)
        # ∇V = 0 only at the minimiser z = 0 of the convex, positive definite V, where phi = 0 too: guard 0/0.
        scale = torch.where(sq > 0, F.relu(phi) / sq.clamp_min(torch.finfo(sq.dtype).tiny), torch.zeros_like(sq))
        f_hat = f_flat - g_flat * scale.unsqueeze(1)
        decrease = (g_flat * f_hat).sum(1) + self.c * v
        info = {"lyapunov_value": v, "lyapunov_decrease": decrease}
        return f_hat.view_as(F_z), info

    def _flat(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(z.shape[0], -1)
        if flat.shape[1] != self.width:
            raise ValueError(
                f"the Lyapunov module was built for states of {self.width} values per sample, got shape "
                f"{tuple(z.shape)}; set the model's width to match the DEQ state"
            )
        return flat

    def extra_repr(self) -> str:
        return f"width={self.width}, d={self.d}, eps={self.eps}, c={self.c}, grad_method={self.grad_method}"
