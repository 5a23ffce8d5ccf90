"""Sign-gradient l_inf attacks: FGSM, I-FGSM (Kurakin et al. 2017) and PGD (Madry et al. 2018), and their step loop.

One step is ``x <- Clip_{x, eps}(x + alpha * sign(grad_x L(model(x), y)))`` followed by a clip to
``[0, 1]`` (:func:`sign_gradient_ascent`, also the inner maximisation of the TRADES and PGD-AT training
objectives). I-FGSM starts at ``x``; PGD starts at a uniform random point of the eps-ball. With the
default ``alpha=None, steps=None`` both follow the LyaDEQ paper: ``alpha = 1/255`` and
``steps = floor(min(eps*255 + 4, 1.25 * eps*255))`` (:func:`~lyadeq_zoo.attacks.threat_model.paper_steps`).
Giving ``steps`` without ``alpha`` uses Madry et al.'s ``alpha = 2.5 * eps / steps``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from ..config import parse_number
from ..registry import register
from .base import Attack, track_best
from .gradients import gradient_mode, input_gradient, input_gradient_rows
from .losses import attack_loss
from .threat_model import paper_steps, project, uniform_start


def sign_gradient_ascent(
    gradient_at: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    start: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    done: torch.Tensor | None = None,
) -> torch.Tensor:
    """``steps`` projected sign-gradient ascent steps inside the eps-ball around ``x``; the last iterate.

    ``x_0 = start``, ``x_{k+1} = project(x_k + step_size * sign(gradient_at(x_k)), x, eps)``. ``gradient_at``
    returns the detached gradient ``(N, C, H, W)`` of the loss being maximised at an iterate; it sees every
    iterate before its step (an attack uses that to keep the best one). ``step_size`` and ``eps`` are on the
    [0, 1] pixel scale. ``done``: an ``(N,)`` bool mask that ``gradient_at`` updates in place (the samples an
    attack has finished with, to which it returns a zero gradient); the loop ends early once it is all True.
    """
    x_adv = start
    for _ in range(steps):
        x_adv = project(x_adv + step_size * gradient_at(x_adv).sign(), x, eps)
        if done is not None and bool(done.all()):
            break
    return x_adv


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
        loss: Literal["ce", "cw", "dlr"] = "ce",
        grad_mode: str | dict[str, Any] | None = None,
        track_best: bool = True,
        early_stop: bool = True,
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
        self.early_stop = bool(early_stop)

    def run_once(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None, restart: int
    ) -> torch.Tensor:
        start = uniform_start(x, self.eps, generator) if self.random_start else x.clone()
        # Keeping the best iterate is only sound when the gradient comes from the model as judged;
        # with a swapped backward the forward may differ, so the last iterate is returned instead.
        keep = self.track_best and self.grad_mode is None
        # A sample whose first misclassified iterate is kept needs no further step: with early_stop the model
        # runs only on the samples not fooled yet, and the loop ends when none is left. The result is the same.
        early = keep and self.early_stop
        best = start.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

        def gradient_at(x_now: torch.Tensor) -> torch.Tensor:
            if early:
                grad, loss, logits = input_gradient_rows(model, x_now, y, self.loss, ~found)
            else:
                grad, loss, logits = input_gradient(model, x_now, y, self.loss)
            if keep and logits is not None:
                track_best(best, best_loss, found, x_now, loss, logits, y)
            return grad

        with gradient_mode(model, self.grad_mode):
            x_adv = sign_gradient_ascent(
                gradient_at, x, start, self.eps, self.alpha, self.steps, done=found if early else None
            )
        if not keep:
            return x_adv
        judge_iterate(model, best, best_loss, found, x_adv, y, self.loss, only_open=early)
        return best


def judge_iterate(
    model: nn.Module,
    best: torch.Tensor,
    best_loss: torch.Tensor,
    found: torch.Tensor,
    x_last: torch.Tensor,
    y: torch.Tensor,
    loss: str,
    only_open: bool,
) -> None:
    """:func:`~.base.track_best` at the iterate ``x_last`` (a forward pass, no gradient); ``only_open``: run the
    model only on the samples not fooled yet (the others' best iterate cannot change)."""
    rows = (~found).nonzero().squeeze(1) if only_open else None
    if rows is not None and rows.numel() == 0:
        return
    view = slice(None) if rows is None else rows
    with torch.no_grad():
        logits = model(x_last[view])
    if rows is None:
        track_best(best, best_loss, found, x_last, attack_loss(loss, logits, y), logits, y)
        return
    sub_best, sub_loss, sub_found = best[rows], best_loss[rows], found[rows]
    track_best(sub_best, sub_loss, sub_found, x_last[rows], attack_loss(loss, logits, y[rows]), logits, y[rows])
    best[rows], best_loss[rows], found[rows] = sub_best, sub_loss, sub_found


@register("attack", "ifgsm")
class IFGSM(IterativeSignAttack):
    """I-FGSM / BIM (Kurakin et al.): iterative sign-gradient steps from ``x_0 = x``.

    Options: ``eps`` (l_inf radius, number or "8/255"), ``alpha`` (step; default 1/255),
    ``steps`` (default: the paper's formula of eps), ``random_start`` (default False), ``restarts``,
    ``loss`` ("ce" | "cw" | "dlr"), ``grad_mode`` (DEQ backward used for the gradient), ``track_best``
    (return the first misclassified / highest-loss iterate instead of the last), ``early_stop`` (with
    ``track_best``: stop stepping a sample once it is misclassified; the same result in less time), ``seed``.
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
        loss: Literal["ce", "cw", "dlr"] = "ce",
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
