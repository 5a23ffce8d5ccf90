"""The solver-divergence attack: inputs in the eps-ball where a DEQ's solver does not reach its equilibrium.

A DEQ's prediction is only defined at ``z* = f(z*, u)``; its solver stops after ``max_iter`` evaluations
whether or not it got there. The model's solve converges when some iterate's relative residual
``||f(z) - z|| / (||f(z)|| + 1e-8)`` reaches the solver's ``tol``. This attack maximises

    r(x) = the lowest relative residual the solver reaches within its budget of ``max_iter`` evaluations,

measured by running the model's own solver with ``tol = 0`` (so it never stops early and returns its
lowest-residual iterate, :func:`lyadeq_zoo.deq.layer.override_solver`). Up to that stopping point the iterates are
those of the model's own solve, so ``r(x) > tol`` exactly when the model's solve at ``x`` does not converge;
unlike the residual of the point the model returns (below ``tol`` whenever it converges, however slowly), ``r``
keeps rising as the solve gets harder. It is ascended by sign-gradient steps projected onto the eps-ball (the
PGD loop, :func:`.sign_gradient.sign_gradient_ascent`), the gradient going through the solver's iterations
(``grad_mode: unroll``, default: the exact derivative of the computation) or another backward mode.

What a sample gets back: of every iterate and restart, the input the model misclassifies, if there is one, with
the highest ``r`` among such inputs; else the input with the highest ``r``. "Misclassifies" is the model's own
prediction (its solver with its ``tol``). The image counts as broken, as for any attack, when that prediction
is wrong; how many returned inputs left the model's solve unconverged is what :func:`lyadeq_zoo.evaluate`
reports per attack (``solver_not_converged``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..deq.layer import override_solver
from ..deq.solvers import RESIDUAL_EPS
from ..errors import AttackNotApplicable
from ..registry import register
from .gradients import gradient_mode, has_deq_layer
from .sign_gradient import IterativeSignAttack, sign_gradient_ascent
from .threat_model import project, uniform_start


def relative_residual(z: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
    """``||f(z) - z|| / (||f(z)|| + 1e-8)`` per sample, ``(N,)``, differentiable (norms over all non-batch dims)."""
    diff = (fz - z).reshape(z.shape[0], -1).norm(dim=1)
    return diff / (fz.reshape(z.shape[0], -1).norm(dim=1) + RESIDUAL_EPS)


def keep_better(
    best: torch.Tensor,
    best_fooled: torch.Tensor,
    best_residual: torch.Tensor,
    x_now: torch.Tensor,
    fooled: torch.Tensor,
    residual: torch.Tensor,
) -> None:
    """In place: per sample keep ``x_now`` if it beats the best so far, fooled first, then higher residual.

    ``best`` (N, C, H, W), ``best_fooled`` (N,) bool, ``best_residual`` (N,) start at the start point, False and
    -inf. A NaN residual (the solve blew up) counts as +inf, the highest.
    """
    residual = torch.nan_to_num(residual, nan=float("inf"))
    better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (residual > best_residual))
    best[better] = x_now[better]
    best_fooled[better] = fooled[better]
    best_residual[better] = residual[better]


@register("attack", "divergence")
class Divergence(IterativeSignAttack):
    """PGD on the lowest relative residual the model's solver reaches in its budget (see the module docstring).

    Options: ``eps``, ``alpha`` (step; default as PGD: 1/255 with the paper's step count, or 2.5·eps/steps when
    ``steps`` is given), ``steps``, ``random_start`` (default True), ``restarts`` (every restart runs on every
    sample; the best input over them is kept), ``grad_mode`` (the DEQ backward the residual is differentiated
    with; default ``unroll``), ``seed``. Each step costs one forward and backward pass through a solve of the full
    ``max_iter`` budget (unrolled by default: memory grows with ``max_iter``) plus one forward pass of the model
    to judge the iterate.

    Only for models with a DEQ layer that expose ``equilibrium(x) -> (z, u, info)`` and ``cell(z, u)``
    (lyadeq_zoo's ``deq_classifier``); others raise :class:`AttackNotApplicable`.
    """

    default_random_start = True

    def __init__(
        self,
        eps: float | str = 8 / 255,
        alpha: float | str | None = None,
        steps: int | None = None,
        random_start: bool | None = None,
        restarts: int = 1,
        grad_mode: str | dict[str, Any] | None = "unroll",
        seed: int | None = None,
    ) -> None:
        super().__init__(
            eps=eps,
            alpha=alpha,
            steps=steps,
            random_start=random_start,
            restarts=restarts,
            grad_mode=grad_mode,
            track_best=True,
            seed=seed,
        )

    def check_model(self, model: nn.Module) -> None:
        needs = ("equilibrium", "cell")
        if not has_deq_layer(model) or any(getattr(model, name, None) is None for name in needs):
            raise AttackNotApplicable(
                "the divergence attack needs a DEQ model exposing equilibrium(x) and cell(z, u) (such as "
                f"lyadeq_zoo's deq_classifier with a DEQ layer); {type(model).__name__} has none"
            )

    def budget_residual(
        self, model: nn.Module, x: torch.Tensor, gradient: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(r(x) (N,), d r / d x summed over the batch, or None)``: ``r`` is the lowest relative residual the
        model's solver reaches in its budget (run with ``tol = 0``); the gradient (``gradient=True``, detached,
        like ``x``) goes through the DEQ backward of ``grad_mode``. Non-finite gradient entries (a solve that
        blew up) give no direction and are set to 0."""
        x = x.detach().requires_grad_(gradient)
        with torch.set_grad_enabled(gradient), override_solver(model, tol=0.0), gradient_mode(model, self.grad_mode):
            z, u, _ = model.equilibrium(x)
            residual = relative_residual(z, model.cell(z, u))
            grad = None
            if gradient and residual.requires_grad:
                (grad,) = torch.autograd.grad(residual.sum(), x, allow_unused=True)
        if gradient:
            grad = torch.zeros_like(x) if grad is None else torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        return residual.detach(), grad

    @staticmethod
    def fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Whether the model, as it is (its own solver and tol), misclassifies ``x``: ``(N,)`` bool."""
        with torch.no_grad():
            return model(x).argmax(1) != y

    def run_once(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None, restart: int
    ) -> torch.Tensor:
        start = uniform_start(x, self.eps, generator) if self.random_start else x.clone()
        best = start.clone()
        best_fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        best_residual = torch.full((x.shape[0],), float("-inf"), device=x.device)

        def gradient_at(x_now: torch.Tensor) -> torch.Tensor:
            residual, grad = self.budget_residual(model, x_now, gradient=True)
            keep_better(best, best_fooled, best_residual, x_now, self.fooled(model, x_now, y), residual)
            return grad

        x_last = sign_gradient_ascent(gradient_at, x, start, self.eps, self.alpha, self.steps)
        residual, _ = self.budget_residual(model, x_last, gradient=False)
        keep_better(best, best_fooled, best_residual, x_last, self.fooled(model, x_last, y), residual)
        return best

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The base driver keeps the first restart that fools a sample, else the highest classification loss;
        # here the residual is the objective, so every restart runs on every sample and the same rule as
        # within a restart (fooled first, then the highest residual) picks among them.
        x = x.detach()
        y = y.detach().to(x.device)
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=x.device)
            generator.manual_seed(int(self.seed))
        best = x.clone()
        if self.eps == 0 or x.shape[0] == 0:
            return best
        best_fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        best_residual = torch.full((x.shape[0],), float("-inf"), device=x.device)
        for restart in range(self.restarts):
            candidate = project(self.run_once(model, x, y, generator, restart).detach(), x, self.eps)
            residual, _ = self.budget_residual(model, candidate, gradient=False)
            keep_better(best, best_fooled, best_residual, candidate, self.fooled(model, candidate, y), residual)
        return best
