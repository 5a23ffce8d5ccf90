"""APGD: Auto-PGD of Croce & Hein (ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), l_inf, written from the paper's description.

PGD with momentum whose step size needs no tuning: it starts at ``eta = 2 eps`` and is halved, per
sample, at checkpoints ``w_j = ceil(p_j * steps)`` with ``p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` when either

1. the loss went up in fewer than ``rho = 0.75`` of the steps since the last checkpoint, or
2. the step size was not halved at the last checkpoint and the best loss has not improved since.

After a halving the iterate restarts from the best point found so far. The update is
``z = P(x_k + eta sign(grad)); x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))`` with
momentum ``a = 0.75`` (``a = 1`` on the first step), ``P`` the projection onto the eps-ball and [0, 1].
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from ..registry import register
from .base import Attack, track_best
from .gradients import gradient_mode, input_gradient, input_gradient_rows
from .threat_model import project, uniform_start


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations (1-based, increasing, < steps) at which APGD may halve its step size."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # round first: 0.22 * 100 is 22.000000000000004 in floating point, which must give 22, not 23
    points = sorted({math.ceil(round(q * steps, 9)) for q in p[1:] if q < 1.0})
    return [w for w in points if 0 < w < steps]


@register("attack", "apgd")
class APGD(Attack):
    """APGD (Croce & Hein 2020) with the ``ce`` or ``dlr`` loss (``cw`` also accepted).

    Options: ``eps``, ``steps`` (iterations, default 100), ``restarts``, ``loss``, ``rho`` (checkpoint
    threshold, 0.75), ``momentum`` (0.75), ``random_start`` (True), ``grad_mode``, ``early_stop`` (True: the
    model runs only on samples not misclassified yet, whose result cannot change any more; every step-size
    decision is per sample, so the result is the same), ``seed``.
    """

    def __init__(
        self,
        eps: float | str = 8 / 255,
        steps: int = 100,
        restarts: int = 1,
        loss: Literal["ce", "cw", "dlr"] = "ce",
        rho: float = 0.75,
        momentum: float = 0.75,
        random_start: bool = True,
        grad_mode: str | dict[str, Any] | None = None,
        early_stop: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__(eps=eps, restarts=restarts, loss=loss, grad_mode=grad_mode, seed=seed)
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps!r}")
        self.steps = int(steps)
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.random_start = bool(random_start)
        self.early_stop = bool(early_stop)

    def run_once(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None, restart: int
    ) -> torch.Tensor:
        n = x.shape[0]
        view = (n,) + (1,) * (x.dim() - 1)
        keep_found = self.grad_mode is None
        checkpoints = set(apgd_checkpoints(self.steps))
        with gradient_mode(model, self.grad_mode):
            x_cur = uniform_start(x, self.eps, generator) if self.random_start else x.clone()
            grad, loss, logits = input_gradient(model, x_cur, y, self.loss)
            found_x = x_cur.clone()
            found_loss = torch.full((n,), float("-inf"), device=x.device)
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            if keep_found:
                track_best(found_x, found_loss, found, x_cur, loss, logits, y)
            x_max, f_max, grad_max = x_cur.clone(), loss.clone(), grad.clone()
            x_prev = x_cur.clone()
            eta = torch.full((n,), 2.0 * self.eps, device=x.device, dtype=x.dtype)
            increases = torch.zeros(n, device=x.device)
            last_w = 0
            eta_at_last = eta.clone()
            f_max_at_last = f_max.clone()
            prev_loss = loss
            early = keep_found and self.early_stop
            for k in range(self.steps):
                if early and bool(found.all()):
                    break  # every sample has its misclassified point: nothing left can change the result
                z = project(x_cur + eta.view(view) * grad.sign(), x, self.eps)
                a = 1.0 if k == 0 else self.momentum
                x_next = project(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev), x, self.eps)
                x_prev, x_cur = x_cur, x_next
                if early:
                    grad, loss, logits = input_gradient_rows(model, x_cur, y, self.loss, ~found)
                else:
                    grad, loss, logits = input_gradient(model, x_cur, y, self.loss)
                if keep_found:
                    track_best(found_x, found_loss, found, x_cur, loss, logits, y)
                increases += (loss > prev_loss).float()
                prev_loss = loss
                improved = loss > f_max
                x_max[improved], f_max[improved], grad_max[improved] = x_cur[improved], loss[improved], grad[improved]
                step = k + 1
                if step in checkpoints:
                    too_few = increases < self.rho * (step - last_w)
                    stalled = (eta == eta_at_last) & (f_max <= f_max_at_last)
                    halve = too_few | stalled
                    eta_at_last, f_max_at_last = eta.clone(), f_max.clone()
                    eta = torch.where(halve, eta / 2, eta)
                    # Restart halved samples from their best point, without momentum.
                    x_cur = torch.where(halve.view(view), x_max, x_cur)
                    x_prev = torch.where(halve.view(view), x_max, x_prev)
                    grad = torch.where(halve.view(view), grad_max, grad)
                    prev_loss = torch.where(halve, f_max, prev_loss)
                    increases.zero_()
                    last_w = step
        return torch.where(found.view(view), found_x, x_max)
