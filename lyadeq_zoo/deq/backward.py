"""Backward modes (kind ``backward``: ``ift``, ``phantom``, ``unroll``): how the fixed point gets its gradient.

A mode is built from its config spec (constructor arguments = config keys) and called as
``mode(f, z0, solve) -> (z_star, info)``, where ``solve(f, z0)`` is the forward solver with its options
bound (and the solver phase entered, see :mod:`lyadeq_zoo.deq.layer`); its ``coupled`` attribute says
whether ``f`` couples samples. The mode runs the forward solve itself and attaches the gradient whenever
``torch.is_grad_enabled()`` — in train **and** eval mode, so attacks on an eval-mode model get a real input
gradient. With grad disabled every mode just solves.

**The forward value never depends on the mode**: each returns exactly the solver's ``z_star`` (the gradient
path is added as ``z_star + (h - h.detach())``), so ``info["rel_residual"]`` is the residual of the tensor
returned, and swapping the mode (e.g. with ``override_backward`` for an attack) changes gradients only,
never logits.

* ``ift`` — implicit differentiation. Solve under ``no_grad``; apply ``f`` once with grad at ``z*``; a hook
  on that output replaces the incoming gradient ``v`` by the solution of the adjoint fixed point
  ``u = J_fᵀ u + v`` (``J_f = ∂f/∂z`` at ``z*``), solved with a registered solver on vector-Jacobian products.
  Backpropagating ``u`` through ``f(z*, x)`` gives ``vᵀ (I - J_f)⁻¹ ∂f/∂θ`` for the cell's parameters and
  for the injection ``x`` alike. Memory: one application of ``f``; no solver iterations are stored.
* ``phantom`` — solve under ``no_grad``, then ``k`` damped steps ``z <- (1 - damping) f(z) + damping z``
  from ``z*`` with grad; the gradient of the last step is used (a truncated, damped Neumann series of the
  IFT gradient; it tends to the IFT gradient as ``k`` grows).
* ``unroll`` — the bound forward solver itself runs under autograd, so the gradient is the exact derivative
  of the computation that produced ``z_star`` (its stopping rule included). This is the reference
  gradient for attacks "through the unrolled solver"; memory grows with the number of iterations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..config import validate_component
from ..registry import get_component, register
from .solvers import Map, SolverResult, run_solver, solver_phase

Solve = Callable[[Map, torch.Tensor], SolverResult]

DEFAULT_ADJOINT_SOLVER: dict[str, Any] = {"type": "anderson", "max_iter": 50, "tol": 1e-6}


def _attach(z_star: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """A tensor equal to ``z_star`` in value whose gradient flows into ``h`` (as if it were ``h``)."""
    return z_star + (h - h.detach())


@register("backward", "ift")
class IFT:
    """Implicit-function-theorem gradient with an adjoint fixed-point solve in a backward hook.

    Args:
        solver: spec of the adjoint solver (``{"type": "anderson", "max_iter": 50, "tol": 1e-6}`` when
            None), any registered solver with its options.

    After each backward pass, ``last_backward_info`` holds the adjoint solver's info (per-sample
    ``nstep``, ``rel_residual``, ``converged``...). When the forward map couples samples (``solve.coupled``,
    see :class:`lyadeq_zoo.deq.layer.BoundSolve`), so does ``J_fᵀ``, and the adjoint solve uses whole-batch
    stopping as the forward did. The hook handles any number of backward passes over one graph
    (``retain_graph=True``); double backward is not supported.
    """

    def __init__(self, solver: dict[str, Any] | None = None) -> None:
        spec = dict(DEFAULT_ADJOINT_SOLVER if solver is None else solver)
        validate_component("solver", spec, ("backward", "solver"))
        self.solver_spec = spec
        self._solver = get_component("solver", spec["type"])
        self._options = {key: value for key, value in spec.items() if key != "type"}
        self.last_backward_info: dict[str, torch.Tensor] | None = None

    def __call__(self, f: Map, z0: torch.Tensor, solve: Solve) -> SolverResult:
        if not torch.is_grad_enabled():
            return solve(f, z0)
        with torch.no_grad():
            z_star, info = solve(f, z0)
        # A map that couples samples has a Jacobian that couples them too: the adjoint solve follows suit.
        coupled = bool(getattr(solve, "coupled", False))
        z_in = z_star.detach().requires_grad_()
        fz = f(z_in)
        if not fz.requires_grad:  # nothing upstream needs a gradient
            return z_star, info
        # The hook sits on an alias of fz, not on fz itself: a hook on fz that refers to fz makes a reference
        # cycle through the autograd graph (tensor -> grad_fn -> hook -> tensor) that only Python's cyclic
        # GC can free, so every forward with grad enabled (each attack step) kept its graph alive for a while.
        # The alias's node points to fz's; nothing in fz's graph points back to the alias or to the hook.
        fz_alias = fz.view_as(fz)

        def hook(grad: torch.Tensor) -> torch.Tensor:
            if grad is None:
                return grad

            def adjoint_map(u: torch.Tensor) -> torch.Tensor:
                (vjp,) = torch.autograd.grad(fz, z_in, u, retain_graph=True)
                return vjp + grad

            u, adj_info = run_solver(self._solver, adjoint_map, torch.zeros_like(grad), self._options, coupled=coupled)
            self.last_backward_info = adj_info
            return u.detach()

        fz_alias.register_hook(hook)
        return _attach(z_star, fz_alias), info

    def __repr__(self) -> str:
        return f"IFT(solver={self.solver_spec!r})"


@register("backward", "phantom")
class Phantom:
    """Phantom gradient: ``k`` damped fixed-point steps with grad from the (no-grad) fixed point.

    Args:
        k: number of steps with grad (>= 1; ``k=1, damping=0`` is the one-step / Jacobian-free gradient).
        damping: weight kept on the previous state in each step, in ``[0, 1)``.

    The first ``k - 1`` steps run inside the solver phase (so a BatchNorm cell treats them like solver
    iterations); the last is the final differentiable application.
    """

    def __init__(self, k: int = 5, damping: float = 0.5) -> None:
        if int(k) < 1:
            raise ValueError(f"phantom: k must be >= 1 (number of differentiable steps), got {k}")
        if not 0.0 <= damping < 1.0:
            raise ValueError(f"phantom: damping must be in [0, 1), got {damping}")
        self.k = int(k)
        self.damping = float(damping)

    def __call__(self, f: Map, z0: torch.Tensor, solve: Solve) -> SolverResult:
        if not torch.is_grad_enabled():
            return solve(f, z0)
        with torch.no_grad():
            z_star, info = solve(f, z0)
        z = z_star.detach()
        for i in range(self.k):
            with solver_phase(i < self.k - 1):
                fz = f(z)
            z = fz if self.damping == 0.0 else torch.lerp(fz, z, self.damping)
        return _attach(z_star, z), info

    def __repr__(self) -> str:
        return f"Phantom(k={self.k}, damping={self.damping})"


@register("backward", "unroll")
class Unroll:
    """Backpropagate through the forward solver's own iterations (the bound solver, run with grad).

    No options: the iterations are those of the layer's forward solver (change them with
    ``lyadeq_zoo.deq.layer.override_solver``, e.g. a larger ``max_iter`` or ``type="naive"``).
    """

    def __call__(self, f: Map, z0: torch.Tensor, solve: Solve) -> SolverResult:
        return solve(f, z0)

    def __repr__(self) -> str:
        return "Unroll()"
