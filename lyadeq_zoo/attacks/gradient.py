"""Sign-gradient l_inf attacks: FGSM, I-FGSM (Kurakin et al. 2017) and PGD (Madry et al. 2018).

One step is ``x <- Clip_{x, eps}(x + alpha * sign(grad_x L(model(x), y)))`` followed by a clip to
``[0, 1]``. I-FGSM starts at ``x``; PGD starts at a uniform random point of the eps-ball. With the
default ``alpha=None, steps=None`` both follow the LyaDEQ paper: ``alpha = 1/255`` and
``steps = floor(min(eps*255 + 4, 1.25 * eps*255))`` (:func:`~lyadeq_zoo.attacks.base.paper_steps`).
Giving ``steps`` without ``alpha`` uses Madry et al.'s ``alpha = 2.5 * eps / steps``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import parse_number
from ..registry import register
from .base import Attack, attack_loss, gradient_mode, input_gradient, paper_steps, project, track_best, uniform_start


class IterativeSignAttack(Attack):
    """Shared loop of I-FGSM and PGD; see the module docstring for the schedule."""

    default_random_start = False

    def __init__(
        self,
        eps: float | str = 8 / 255,
        alpha: float | str | None = None,
        steps: int | None = None,
        random_start: bool | None = None,
        restarts: int = 1,
        loss: str = "ce",
        grad_mode: str | dict[str, Any] | None = None,
        track_best: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__(eps=eps, restarts=restarts, loss=loss, grad_mode=grad_mode, seed=seed)
        if steps is not None and int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps!r}")
        self.steps = paper_steps(self.eps) if steps is None else int(steps)
        if alpha is not None:
            self.alpha = parse_number(alpha)
        elif steps is None:
            self.alpha = 1.0 / 255.0
        else:
            self.alpha = 2.5 * self.eps / self.steps
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        self.random_start = self.default_random_start if random_start is None else bool(random_start)
        self.track_best = bool(track_best)

    def run_once(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None, restart: int
    ) -> torch.Tensor:
        x_adv = uniform_start(x, self.eps, generator) if self.random_start else x.clone()
        # Keeping the best iterate is only sound when the gradient comes from the model as judged;
        # with a swapped backward the forward may differ, so the last iterate is returned instead.
        keep = self.track_best and self.grad_mode is None
        best = x_adv.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        with gradient_mode(model, self.grad_mode):
            for _ in range(self.steps):
                grad, loss, logits = input_gradient(model, x_adv, y, self.loss)
                if keep:
                    track_best(best, best_loss, found, x_adv, loss, logits, y)
                x_adv = project(x_adv + self.alpha * grad.sign(), x, self.eps)
        if not keep:
            return x_adv
        with torch.no_grad():
            logits = model(x_adv)
        track_best(best, best_loss, found, x_adv, attack_loss(self.loss, logits, y), logits, y)
        return best


@register("attack", "ifgsm")
class IFGSM(IterativeSignAttack):
    """I-FGSM / BIM (Kurakin et al.): iterative sign-gradient steps from ``x_0 = x``.

    Options: ``eps`` (l_inf radius, number or "8/255"), ``alpha`` (step; default 1/255),
    ``steps`` (default: the paper's formula of eps), ``random_start`` (default False), ``restarts``,
    ``loss`` ("ce" | "cw" | "dlr"), ``grad_mode`` (DEQ backward used for the gradient), ``track_best``
    (return the first misclassified / highest-loss iterate instead of the last), ``seed``.
    """

    default_random_start = False


@register("attack", "pgd")
class PGD(IterativeSignAttack):
    """PGD (Madry et al.): like I-FGSM but from a uniform random point of the eps-ball (default).

    Same options as :class:`IFGSM`; ``restarts > 1`` draws a new start for each samples not yet fooled.
    """

    default_random_start = True


@register("attack", "fgsm")
class FGSM(Attack):
    """FGSM (Goodfellow et al. 2015): one step of size ``eps`` along the sign of the input gradient."""

    single_step = True

    def __init__(
        self,
        eps: float | str = 8 / 255,
        loss: str = "ce",
        grad_mode: str | dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(eps=eps, restarts=1, loss=loss, grad_mode=grad_mode, seed=seed)

    def run_once(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None, restart: int
    ) -> torch.Tensor:
        with gradient_mode(model, self.grad_mode):
            grad, _, _ = input_gradient(model, x, y, self.loss)
        return project(x + self.eps * grad.sign(), x, self.eps)
