"""The solver-divergence attack: inputs in the eps-ball where a DEQ's solver does not reach its equilibrium.

A DEQ's prediction is only defined at ``z* = f(z*, u)``; its solver stops after ``max_iter`` evaluations
whether or not it got there. The model's solve converges when some iterate's relative residual
``||f(z) - z|| / (||f(z)|| + 1e-8)`` reaches the solver's ``tol``. This attack maximises

    r_k(x) = the lowest relative residual the model's solver reaches within its first k evaluations,

measured by running the model's own solver with ``tol = 0`` and ``max_iter = k`` (so it never stops early and
returns its lowest-residual iterate, :func:`lyadeq_zoo.deq.layer.override_solver`). Up to where the model's own
solve stops the iterates are the same, so ``r_k(x) > tol`` exactly when the model's solve at ``x`` needs more than
``k`` evaluations; with ``k = max_iter``, exactly when it does not converge. ``k`` is the option ``residual_at``,
by default half the model's ``max_iter``: a solve that converges comfortably sits at float rounding by the end
of its budget, where the residual and its gradient are noise; halfway it still measures how fast the solve
contracts, which is what has to get worse for it to fail. ``r_k`` is ascended by sign-gradient steps projected
onto the eps-ball (the PGD loop, :func:`.sign_gradient.sign_gradient_ascent`), the gradient going through the
solver's iterations (``grad_mode: unroll``, default: the exact derivative of the computation) or another backward.

What a sample gets back, of every iterate and restart (the first restart starts at ``x`` itself): an input at
which the model's own solve fails, if one was found; among those (or, if none, among all) one the model also
misclassifies, if any; and among those the highest ``r_k`` (:class:`Candidates`). Both are judged by the model's
own forward pass. The image counts as broken, as for any attack, when the model's prediction there is wrong; how
many returned inputs left the model's solve unconverged is what :func:`lyadeq_zoo.evaluate` reports per attack
(``solver_not_converged``).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch
from torch import nn

from ..deq.layer import DEQLayer, override_solver
from ..deq.solvers import RESIDUAL_EPS
from ..errors import AttackNotApplicable
from ..registry import get_component, register
from .gradients import gradient_mode
from .sign_gradient import IterativeSignAttack, sign_gradient_ascent
from .threat_model import project, uniform_start


def relative_residual(z: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
    """``||f(z) - z|| / (||f(z)|| + 1e-8)`` per sample, ``(N,)``, differentiable (norms over all non-batch dims)."""
    diff = (fz - z).reshape(z.shape[0], -1).norm(dim=1)
    return diff / (fz.reshape(z.shape[0], -1).norm(dim=1) + RESIDUAL_EPS)


@dataclasses.dataclass
class Candidates:
    """Per sample, the best input so far and its score ``(solve failed, misclassified, r)``, compared in that order.

    ``x`` (N, C, H, W); ``failed``, ``fooled`` (N,) bool; ``residual`` (N,) float (a NaN ``r``, from a solve that
    blew up, counts as +inf).
    """

    x: torch.Tensor
    failed: torch.Tensor
    fooled: torch.Tensor
    residual: torch.Tensor

    @classmethod
    def empty(cls, x: torch.Tensor) -> Candidates:
        """``x`` itself with the lowest possible score (any offer beats it)."""
        n = x.shape[0]
        none = torch.zeros(n, dtype=torch.bool, device=x.device)
        return cls(x.clone(), none, none.clone(), torch.full((n,), float("-inf"), device=x.device))

    def offer(self, x_now: torch.Tensor, failed: torch.Tensor, fooled: torch.Tensor, residual: torch.Tensor) -> None:
        """In place: keep ``x_now`` for the samples where its score beats the best so far."""
        residual = torch.nan_to_num(residual, nan=float("inf"))
        same_failed = failed == self.failed
        better = (failed & ~self.failed) | (same_failed & fooled & ~self.fooled)
        better |= same_failed & (fooled == self.fooled) & (residual > self.residual)
        self.x[better] = x_now[better]
        self.failed[better] = failed[better]
        self.fooled[better] = fooled[better]
        self.residual[better] = residual[better]


@register("attack", "divergence")
class Divergence(IterativeSignAttack):
    """PGD on the lowest relative residual the model's solver reaches in its budget (see the module docstring).

    Options: ``eps``, ``alpha`` (step; default as PGD: 1/255 with the paper's step count, or 2.5·eps/steps when
    ``steps`` is given), ``steps``, ``restarts`` (every restart runs on every sample; the best input over them is
    kept), ``random_start`` (default True: restarts after the first, which starts at ``x``, start at uniform random
    points of the ball), ``residual_at`` (k: the solver evaluations after which the residual is taken; default half
    the model's ``max_iter``), ``grad_mode`` (the DEQ backward the residual is differentiated with; default
    ``unroll``), ``seed``. Each step costs one forward and backward pass through k solver evaluations (unrolled by
    default: memory grows with k) plus one forward pass of the model to judge the iterate.

    Only for models with one DEQ layer that expose ``equilibrium(x) -> (z, u, info)`` and ``cell(z, u)``
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
        residual_at: int | None = None,
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
            early_stop=False,  # this attack keeps its own candidates (Candidates), not the first fooled iterate
            seed=seed,
        )
        if residual_at is not None and int(residual_at) < 1:
            raise ValueError(f"residual_at must be >= 1 solver evaluations, got {residual_at!r}")
        self.residual_at = None if residual_at is None else int(residual_at)

    def check_model(self, model: nn.Module) -> None:
        layers = [m for m in model.modules() if isinstance(m, DEQLayer)]
        if len(layers) != 1 or any(getattr(model, name, None) is None for name in ("equilibrium", "cell")):
            raise AttackNotApplicable(
                "the divergence attack needs a model with one DEQ layer exposing equilibrium(x) and cell(z, u) (such "
                f"as lyadeq_zoo's deq_classifier with a DEQ layer); {type(model).__name__} is not one"
            )

    def budget_residual(
        self, model: nn.Module, x: torch.Tensor, gradient: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(r_k(x) (N,), d r_k / d x summed over the batch, or None)``: ``r_k`` is the lowest relative residual the
        model's solver reaches in its first ``k = residual_at`` evaluations (run with ``tol = 0``); the gradient
        (``gradient=True``, detached, like ``x``) goes through the DEQ backward of ``grad_mode``. Non-finite gradient
        entries (a solve that blew up) give no direction and are set to 0."""
        x = x.detach().requires_grad_(gradient)
        solve_k = override_solver(model, tol=0.0, max_iter=self.evaluations(model))
        with torch.set_grad_enabled(gradient), solve_k, gradient_mode(model, self.grad_mode):
            z, u, _ = model.equilibrium(x)
            residual = relative_residual(z, model.cell(z, u))
            grad = None
            if gradient and residual.requires_grad:
                (grad,) = torch.autograd.grad(residual.sum(), x, allow_unused=True)
        if gradient:
            grad = torch.zeros_like(x) if grad is None else torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        return residual.detach(), grad

    def evaluations(self, model: nn.Module) -> int:
        """k: ``residual_at``, or half the model's solver budget (its ``max_iter``, else the solver's default)."""
        if self.residual_at is not None:
            return self.residual_at
        (layer,) = [m for m in model.modules() if isinstance(m, DEQLayer)]
        max_iter = layer.solver_spec.get("max_iter")
        if max_iter is None:
            solver = get_component("solver", layer.solver_spec["type"])
            param = inspect.signature(solver).parameters.get("max_iter")
            if param is None or param.default is inspect.Parameter.empty:
                raise ValueError(
                    f"divergence: the solver {layer.solver_spec['type']!r} has no max_iter default to take half of; "
                    "set residual_at (solver evaluations) on the attack"
                )
            max_iter = param.default
        return max(1, int(max_iter) // 2)

    @staticmethod
    def judge(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(solve failed, misclassified)``, both ``(N,)`` bool, from the model's own forward pass at ``x``."""
        with torch.no_grad():
            fooled = model(x).argmax(1) != y
        (layer,) = [m for m in model.modules() if isinstance(m, DEQLayer)]
        return ~layer.last_info["converged"].to(x.device), fooled

    def score(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(failed, fooled, r)`` of inputs ``x`` (no gradient)."""
        residual, _ = self.budget_residual(model, x, gradient=False)
        return (*self.judge(model, x, y), residual)

    def run_once(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None, restart: int
    ) -> torch.Tensor:
        # The first restart starts at x itself, so the input returned never scores below the clean image; the later
        # ones (random_start) at uniform points of the ball.
        start = uniform_start(x, self.eps, generator) if self.random_start and restart > 0 else x.clone()
        best = Candidates.empty(start)

        def gradient_at(x_now: torch.Tensor) -> torch.Tensor:
            residual, grad = self.budget_residual(model, x_now, gradient=True)
            best.offer(x_now, *self.judge(model, x_now, y), residual)
            return grad

        x_last = sign_gradient_ascent(gradient_at, x, start, self.eps, self.alpha, self.steps)
        best.offer(x_last, *self.score(model, x_last, y))
        return best.x

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The base driver keeps the first restart that fools a sample, else the highest classification loss;
        # here every restart runs on every sample and the rule used within a restart picks among them.
        x = x.detach()
        y = y.detach().to(x.device)
        if self.eps == 0 or x.shape[0] == 0:
            return x.clone()
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=x.device)
            generator.manual_seed(int(self.seed))
        best = Candidates.empty(x)
        for restart in range(self.restarts):
            candidate = project(self.run_once(model, x, y, generator, restart).detach(), x, self.eps)
            best.offer(candidate, *self.score(model, candidate, y))
        return best.x
