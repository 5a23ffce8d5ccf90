"""PGD through a DEQ's intermediate states (Yang, Pang & Liu, NeurIPS 2022): a DEQ-adaptive white-box attack.

A DEQ's own backward (``ift``, ``phantom`` ...) differentiates the equilibrium ``z*``; when that gradient is
wrong or blocked (a masked backward, a forward/backward mismatch) PGD with it stalls although the model is
not robust. This attack never uses the backward mode. It runs the plain fixed-point iteration
``z_{k+1} = f(z_k, u)`` from ``z_0 = 0`` for ``K = iterates`` steps under autograd
(:meth:`lyadeq_zoo.models.DEQClassifier.path_logits`), passes every iterate through the model's Lyapunov
stage and head, and ascends a weighted mean of the per-iterate losses

    L(x) = sum_{k=1..K} w_k · loss(logits(z_k(x)), y),      sum_k w_k = 1,

with the PGD loop (sign-gradient steps projected onto the eps-ball, :func:`.sign_gradient.sign_gradient_ascent`).
``weighting``: ``uniform`` (``w_k = 1/K``), ``increasing`` (``w_k`` proportional to ``k``: the iterates nearer
the equilibrium count more) or ``last`` (``z_K`` only: an unrolled ``K``-step plain solver).

Whether a sample is fooled is judged by the model itself (its own solver, at its ``z*``), never by the path.
The masking checks count the attack with the alternative-backward ones (its ``grad_mode`` names the path,
see :attr:`Intermediate.grad_mode`): if it breaks beyond the attacks using the model's own gradient, that
gradient is misleading.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..errors import AttackNotApplicable
from ..registry import register
from .gradients import has_deq_layer
from .losses import attack_loss
from .sign_gradient import IterativeSignAttack, judge_iterate, sign_gradient_ascent
from .threat_model import uniform_start

WEIGHTINGS = ("uniform", "increasing", "last")
#: ``grad_mode["type"]`` of this attack: a description of its gradient path, not a registered backward mode.
PATH_GRADIENT = "intermediate_states"


def iterate_weights(weighting: str, iterates: int) -> list[float]:
    """The weights ``w_1 .. w_K`` (summing to 1) of the per-iterate losses for ``weighting``."""
    if weighting == "uniform":
        return [1.0 / iterates] * iterates
    if weighting == "increasing":
        total = iterates * (iterates + 1) / 2
        return [k / total for k in range(1, iterates + 1)]
    if weighting == "last":
        return [0.0] * (iterates - 1) + [1.0]
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")


@register("attack", "intermediate")
class Intermediate(IterativeSignAttack):
    """PGD on the losses of the intermediate iterates ``z_1 .. z_K`` of the plain fixed-point iteration.

    Options: ``eps``, ``alpha`` (step; default as PGD: 1/255 with the paper's step count, or 2.5·eps/steps when
    ``steps`` is given), ``steps``, ``iterates`` (K, the cell applications unrolled per gradient, default 10),
    ``weighting`` (``uniform`` | ``increasing`` | ``last``), ``random_start`` (default True), ``restarts``,
    ``loss`` (``ce`` | ``cw`` | ``dlr``), ``track_best`` (keep the first iterate the model misclassifies, else the
    highest-loss one, by one extra forward of the model per step), ``early_stop`` (with ``track_best``: stop
    stepping a sample once the model misclassifies it; the same result in less time), ``seed``.

    Only for models that expose the path (``path_logits(x, steps)``, as ``DEQClassifier`` with a DEQ layer
    does); others raise :class:`AttackNotApplicable`. Memory grows with ``iterates`` (every step is kept for the
    backward pass).
    """

    default_random_start = True

    def __init__(
        self,
        eps: float | str = 8 / 255,
        alpha: float | str | None = None,
        steps: int | None = None,
        iterates: int = 10,
        weighting: Literal["uniform", "increasing", "last"] = "uniform",
        random_start: bool | None = None,
        restarts: int = 1,
        loss: Literal["ce", "cw", "dlr"] = "ce",
        track_best: bool = True,
        early_stop: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            eps=eps,
            alpha=alpha,
            steps=steps,
            random_start=random_start,
            restarts=restarts,
            loss=loss,
            track_best=track_best,
            early_stop=early_stop,
            seed=seed,
        )
        if int(iterates) < 1:
            raise ValueError(f"iterates must be >= 1, got {iterates!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        self.iterates = int(iterates)
        self.weighting = weighting
        self._weights = iterate_weights(weighting, self.iterates)
        #: Not the model's own backward: the masking checks read a non-None grad_mode as "another gradient path".
        self.grad_mode = {"type": PATH_GRADIENT, "iterates": self.iterates, "weighting": weighting}

    def check_model(self, model: nn.Module) -> None:
        if not has_deq_layer(model) or not callable(getattr(model, "path_logits", None)):
            raise AttackNotApplicable(
                f"the intermediate attack needs a DEQ model that exposes its solver path (path_logits), such as "
                f"lyadeq_zoo's deq_classifier with a DEQ layer; {type(model).__name__} has none"
            )

    def path_gradient(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """d L / d x (detached, like ``x``) of the weighted per-iterate loss summed over the batch.

        Non-finite entries (an iterate that overflowed) give no direction and are set to 0.
        """
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            path = model.path_logits(x, self.iterates)
            loss = sum(w * attack_loss(self.loss, logits, y) for w, logits in zip(self._weights, path, strict=True)
                       if w > 0)
            (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
        if grad is None:
            return torch.zeros_like(x)
        return torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)

    def run_once(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None, restart: int
    ) -> torch.Tensor:
        start = uniform_start(x, self.eps, generator) if self.random_start else x.clone()
        best = start.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

        early = self.track_best and self.early_stop

        def gradient_at(x_now: torch.Tensor) -> torch.Tensor:
            if self.track_best:
                judge_iterate(model, best, best_loss, found, x_now, y, self.loss, only_open=early)
            if not early:
                return self.path_gradient(model, x_now, y)
            # Only the samples the model still classifies correctly move on (the others' best cannot change).
            grad = torch.zeros_like(x_now)
            rows = (~found).nonzero().squeeze(1)
            if rows.numel():
                grad[rows] = self.path_gradient(model, x_now[rows], y[rows])
            return grad

        x_adv = sign_gradient_ascent(
            gradient_at, x, start, self.eps, self.alpha, self.steps, done=found if early else None
        )
        if not self.track_best:
            return x_adv
        judge_iterate(model, best, best_loss, found, x_adv, y, self.loss, only_open=early)
        return best
