"""Batched fixed-point solvers (kind ``solver``): ``anderson``, ``broyden``, ``naive``.

Every solver has the signature
``solve(f, z0, /, *, max_iter, tol, coupled=False, <named options>) -> (z_star, info)``:

* ``f`` maps a batch of states to a batch of states of the same shape ``(N, *)``; ``z0`` is the start.
  The batch is always evaluated whole.
* ``max_iter`` is the budget of ``f`` evaluations. ``tol`` is the per-sample relative residual
  ``||f(z) - z|| / (||f(z)|| + 1e-8)`` (norms over all non-batch dims) at which a sample counts as converged.
* ``coupled`` says whether ``f(z)[i]`` may depend on the other samples ``z[j]`` (BatchNorm with batch
  statistics does that). The DEQ layer sets it from its cell (it is not a config key); it selects one of
  two stopping rules:

  - ``coupled=False`` (**per-sample stopping**, for per-sample maps). A converged sample is frozen: its
    iterate stops changing (masked with ``torch.where``; no Python loop over samples) while the others go
    on. Per sample, the iterate with the lowest relative residual is returned (for a converged sample the
    point where it converged), so samples of the returned batch may come from different iterations. That
    is exact only because ``f`` is per sample: a sample's residual does not depend on where the others are.
  - ``coupled=True`` (**whole-batch stopping**). No sample is frozen: every sample moves at every
    iteration, the loop ends at the first iterate at which every sample has converged, and one iterate is
    returned for the whole batch: the one whose worst relative residual is the lowest (NaN counts as
    +inf). Each sample's residual was measured on that very batch, so it is the true residual there.

  The loop ends when every sample has converged or the budget is spent. Stopping needs one host sync per
  iteration (reading the counts of converged and improved samples together; the counts also let the
  all-active / all-improved cases skip the masking); it is the only one in the anderson and naive loops
  (broyden adds one for its restart test). On CPU it is free, on a GPU a few microseconds per iteration.
* **What is returned.** The evaluated point ``z_k`` whose residual was measured, not the extra step
  ``f(z_k)`` (whose residual never was): the residuals in ``info`` are those *of the returned point*, and
  no extra ``f`` evaluation is needed to report them. A sample that did not converge is returned as it
  is, with ``converged`` False and its true residual.
* ``info`` (all detached): ``nstep`` (N,) int64, the **index of the returned iterate** counted in ``f``
  evaluations (1 means ``z0`` itself, k means the point whose residual the k-th evaluation measured), not
  the iterations spent; the iterations spent by the batch are ``n_f_evals``, 0-dim int64, the total number
  of (batched) ``f`` evaluations, and every sample goes through all of them (the batch is evaluated whole).
  In per-sample mode a converged sample's ``nstep`` is also the evaluation after which it stopped moving
  (it is frozen from there on); with ``coupled=True`` ``nstep`` is the same for every sample.
  ``rel_residual`` and ``abs_residual`` (N,) in the dtype of ``z0``; ``converged`` (N,) bool,
  ``rel_residual <= tol`` at the returned point.
* dtype and device follow ``z0`` (float32 and float64 are tested).
* **Autograd.** Solvers are differentiable: when autograd is on and ``f``'s output requires grad, every
  operation is recorded (history buffers are updated out of place), so the ``unroll`` backward mode can
  backpropagate through the very iterations that produced ``z_star``. Otherwise buffers are updated in
  place. Run under ``torch.no_grad()`` when no gradient is wanted.

:func:`run_solver` runs any registered solver (plugins without a ``coupled`` option included) so that its
``info`` is true at the returned batch; the DEQ layer and the ``ift`` adjoint solve use it.

Layout: one solver per module (:mod:`.anderson`, :mod:`.broyden`, :mod:`.naive`); :mod:`.common` holds
what they share (residuals, argument checks, the stopping and best-iterate bookkeeping, :func:`run_solver`).
"""

from .anderson import anderson
from .broyden import broyden
from .common import (
    RESIDUAL_EPS,
    Map,
    SolverResult,
    in_solver_phase,
    residuals,
    run_solver,
    solver_phase,
    takes_coupled,
)
from .naive import naive

__all__ = [
    "RESIDUAL_EPS",
    "Map",
    "SolverResult",
    "anderson",
    "broyden",
    "in_solver_phase",
    "naive",
    "residuals",
    "run_solver",
    "solver_phase",
    "takes_coupled",
]
