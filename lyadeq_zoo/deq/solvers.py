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
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from ..registry import register

Map = Callable[[torch.Tensor], torch.Tensor]
SolverResult = tuple[torch.Tensor, dict[str, torch.Tensor]]

RESIDUAL_EPS = 1e-8  # the "+ 1e-8" of the relative residual

_SOLVER_PHASE: contextvars.ContextVar[bool] = contextvars.ContextVar("lyadeq_zoo_solver_phase", default=False)


@contextlib.contextmanager
def solver_phase(active: bool = True) -> Iterator[None]:
    """Mark the calls of ``f`` made inside as solver iterations (``active=False`` marks them as not).

    The DEQ layer wraps its forward solve in this; the final differentiable application(s) of ``f`` made
    by a backward mode run outside it. A cell can read :func:`in_solver_phase` to, e.g., leave BatchNorm
    running statistics alone during the iterations.
    """
    token = _SOLVER_PHASE.set(bool(active))
    try:
        yield
    finally:
        _SOLVER_PHASE.reset(token)


def in_solver_phase() -> bool:
    """True while a DEQ layer's solver is iterating (inside :func:`solver_phase`)."""
    return _SOLVER_PHASE.get()


def residuals(z: torch.Tensor, fz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(abs, rel)`` residuals ``||f(z) - z||`` and ``||f(z) - z|| / (||f(z)|| + 1e-8)``.

    ``z``, ``fz``: ``(N, *)``. Returns two detached ``(N,)`` tensors in the dtype of ``z``.
    """
    with torch.no_grad():
        diff = (fz - z).reshape(z.shape[0], -1).norm(dim=1)
        return diff, diff / (fz.reshape(z.shape[0], -1).norm(dim=1) + RESIDUAL_EPS)


def _parameters(solver: Callable[..., SolverResult]) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(solver).parameters
    except (TypeError, ValueError):  # no introspectable signature: treat as taking no named options
        return {}


def takes_coupled(solver: Callable[..., SolverResult]) -> bool:
    """Whether ``solver`` has a ``coupled`` keyword (the built-in solvers do; a plugin solver may not)."""
    return "coupled" in _parameters(solver)


def run_solver(
    solver: Callable[..., SolverResult], f: Map, z0: torch.Tensor, options: Mapping[str, Any], *, coupled: bool
) -> SolverResult:
    """``solver(f, z0, **options)`` with an ``info`` that is true at the returned batch.

    ``coupled``: whether ``f(z)[i]`` may depend on other samples. False: the solver runs as given (per-sample
    stopping; exact for a per-sample map). True: a solver with a ``coupled`` keyword gets ``coupled=True``
    (whole-batch stopping, one iterate returned: its residuals are exact); for one without, ``rel_residual``,
    ``abs_residual`` and ``converged`` (``rel_residual <= tol``, ``tol`` from ``options`` or the solver's
    default; dropped if the solver has no ``tol``) are measured again at the returned batch with one extra
    ``f`` evaluation under no grad, counted in ``n_f_evals``. Call it inside :func:`solver_phase` where that
    matters (the DEQ layer does).
    """
    if not coupled:
        return solver(f, z0, **options)
    if takes_coupled(solver):
        return solver(f, z0, **options, coupled=True)
    z_star, info = solver(f, z0, **options)
    with torch.no_grad():
        z = z_star.detach()
        abs_r, rel_r = residuals(z, f(z))
    info = {**info, "rel_residual": rel_r, "abs_residual": abs_r}
    tol = options.get("tol", getattr(_parameters(solver).get("tol"), "default", inspect.Parameter.empty))
    if tol is not inspect.Parameter.empty:
        info["converged"] = rel_r <= tol
    else:  # a flag that cannot be checked again is dropped rather than reported possibly false
        info.pop("converged", None)
    if isinstance(info.get("n_f_evals"), torch.Tensor):
        info["n_f_evals"] = info["n_f_evals"] + 1
    return z_star, info


def _check_args(name: str, z0: torch.Tensor, max_iter: int, tol: float) -> None:
    if not isinstance(z0, torch.Tensor) or z0.dim() < 1:
        raise ValueError(f"{name}: z0 must be a tensor with a batch dimension first, got {type(z0).__name__}")
    if not z0.is_floating_point():
        raise ValueError(f"{name}: z0 must be a floating-point tensor, got dtype {z0.dtype}")
    if int(max_iter) < 1:
        raise ValueError(f"{name}: max_iter must be >= 1 (the f-evaluation budget), got {max_iter}")
    if not tol >= 0:
        raise ValueError(f"{name}: tol must be a non-negative relative residual, got {tol}")


def _flat_map(f: Map, shape: torch.Size) -> Map:
    """``f`` on flattened ``(N, d)`` states; checks that ``f`` keeps the shape."""

    def flat(z: torch.Tensor) -> torch.Tensor:
        out = f(z.view(shape))
        if out.shape != shape:
            raise ValueError(f"the fixed-point map must keep the state shape {tuple(shape)}, got {tuple(out.shape)}")
        return out.reshape(shape[0], -1)

    return flat


def _residuals_from(g: torch.Tensor, fz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``residuals`` for flat ``(N, d)`` tensors when ``g = fz - z`` is already at hand."""
    with torch.no_grad():
        diff = g.norm(dim=1)
        return diff, diff / (fz.norm(dim=1) + RESIDUAL_EPS)


def _residuals_from_sq(gg: torch.Tensor, fz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``residuals`` for flat ``(N, d)`` tensors when ``gg = ||f(z) - z||²`` per sample is already at hand."""
    with torch.no_grad():
        diff = gg.sqrt()
        return diff, diff / (fz.norm(dim=1) + RESIDUAL_EPS)


def _finite_rows(t: torch.Tensor) -> torch.Tensor:
    """Per row of ``(N, d)``: True where every entry is finite (two kernels instead of isfinite's four).

    A row sum is finite iff its entries are (barring overflow of huge finite entries, which is treated as
    non-finite, the safe side): ``s - s`` is 0 for finite ``s`` and NaN for ±inf or NaN.
    """
    s = t.sum(dim=1)
    return (s - s) == 0


def _select(mask: torch.Tensor, count: int, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``where(mask, new, old)`` per sample; ``count = mask.sum()`` lets the common all/none cases skip it.

    (``torch.where`` on a broadcast mask costs several times a plain elementwise op on CPU.)
    """
    if count == mask.shape[0]:
        return new
    if count == 0:
        return old
    return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)


# Below this state size a broadcast multiply-and-sum beats batched GEMM (one tiny GEMM per sample) on CPU.
_SMALL_DIM = 128


def _weighted_rows(weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``sum_i weights[:, i] rows[:, i]``: ``(B, n)``, ``(B, n, d)`` -> ``(B, d)``."""
    if rows.shape[-1] <= _SMALL_DIM:
        return (weights.unsqueeze(2) * rows).sum(1)
    return torch.bmm(weights.unsqueeze(1), rows).squeeze(1)


def _row_dots(vec: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``<vec, rows[:, i]>`` for every i: ``(B, d)``, ``(B, n, d)`` -> ``(B, n)``."""
    if rows.shape[-1] <= _SMALL_DIM:
        return (rows * vec.unsqueeze(1)).sum(2)
    # (1 x d)(d x n) per sample: several times faster on CPU than the (n x d)(d x 1) orientation.
    return torch.bmm(vec.unsqueeze(1), rows.transpose(1, 2)).squeeze(1)


def _worst(rel_r: torch.Tensor) -> torch.Tensor:
    """The batch's worst relative residual (0-dim), NaN counted as +inf."""
    return rel_r.nan_to_num(nan=float("inf"), posinf=float("inf")).max()


class _Tracker:
    """The iterate to return, its residuals and step, and the converged/active masks.

    Per-sample mode (``coupled=False``): the best iterate per sample; converged samples are frozen.
    Whole-batch mode (``coupled=True``): the best batch iterate (lowest worst-sample residual); nothing is
    frozen, and ``converged`` holds the flags of that iterate.
    """

    def __init__(
        self, z: torch.Tensor, abs_r: torch.Tensor, rel_r: torch.Tensor, tol: float, coupled: bool = False
    ) -> None:
        self.tol = tol
        self.coupled = coupled
        self.batch = z.shape[0]
        self.best_z = z
        self.best_abs = abs_r
        self.best_rel = rel_r
        self.best_step = torch.ones(z.shape[0], dtype=torch.int64, device=z.device)
        self.converged = rel_r <= tol
        self.n_converged = int(self.converged.sum())
        self.n_evals = 1
        if coupled:
            self.best_worst = _worst(rel_r)
            self._everyone = torch.ones_like(self.converged)
            self._no_one = torch.zeros_like(self.converged)

    def update(self, z: torch.Tensor, abs_r: torch.Tensor, rel_r: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Record the newly evaluated iterate ``z``; returns the per-sample ``improved`` mask and its count.

        One host sync (the two counts), which also serves the stopping test.
        """
        self.n_evals += 1
        if self.coupled:
            return self._update_batch(z, abs_r, rel_r)
        # NaN residuals compare False, so a non-finite iterate never becomes the best one.
        improved = rel_r < self.best_rel
        self.converged = self.converged | (rel_r <= self.tol)
        n_improved, self.n_converged = torch.stack((improved, self.converged)).sum(1).tolist()
        if n_improved == self.batch:  # the common case while converging: no masking at all
            self.best_z, self.best_abs, self.best_rel = z, abs_r, rel_r
            self.best_step = torch.full_like(self.best_step, self.n_evals)
        elif n_improved:
            self.best_z = _select(improved, n_improved, z, self.best_z)
            self.best_abs = torch.where(improved, abs_r, self.best_abs)
            self.best_rel = torch.where(improved, rel_r, self.best_rel)
            self.best_step = self.best_step.masked_fill(improved, self.n_evals)
        return improved, n_improved

    def _update_batch(self, z: torch.Tensor, abs_r: torch.Tensor, rel_r: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Whole-batch mode: ``z`` replaces the returned iterate iff its worst residual is lower."""
        worst = _worst(rel_r)
        converged = rel_r <= self.tol
        better, n_converged = torch.stack((worst < self.best_worst, converged.sum())).tolist()
        if not better:
            return self._no_one, 0
        self.best_z, self.best_abs, self.best_rel, self.best_worst = z, abs_r, rel_r, worst
        self.best_step = torch.full_like(self.best_step, self.n_evals)
        self.converged, self.n_converged = converged, n_converged
        return self._everyone, self.batch

    def select_active(self, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """``new`` for the samples still iterating, ``old`` (frozen) for the converged ones."""
        if self.n_converged == 0 or self.coupled:
            return new
        return _select(self.active, self.n_active, new, old)

    @property
    def active(self) -> torch.Tensor:
        """The samples that still move: the unconverged ones, or (whole-batch mode) every sample."""
        return self._everyone if self.coupled else ~self.converged

    @property
    def n_active(self) -> int:
        """``active.sum()``; 0 once the loop should stop (every sample converged at one iterate)."""
        if self.coupled:
            return 0 if self.n_converged == self.batch else self.batch
        return self.batch - self.n_converged

    def result(self, shape: torch.Size) -> SolverResult:
        info = {
            "nstep": self.best_step,
            "rel_residual": self.best_rel,
            "abs_residual": self.best_abs,
            "converged": self.converged,
            "n_f_evals": torch.tensor(self.n_evals, dtype=torch.int64),
        }
        return self.best_z.reshape(shape), info


def _tracking(fz: torch.Tensor, z0: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (fz.requires_grad or z0.requires_grad)


@register("solver", "naive")
def naive(
    f: Map,
    z0: torch.Tensor,
    /,
    *,
    max_iter: int = 50,
    tol: float = 1e-4,
    damping: float = 0.0,
    coupled: bool = False,
) -> SolverResult:
    """Damped fixed-point iteration ``z_{k+1} = (1 - damping) f(z_k) + damping z_k``.

    Args:
        f: the map, ``(N, *) -> (N, *)``.
        z0: start, ``(N, *)``.
        max_iter: budget of ``f`` evaluations.
        tol: per-sample relative residual threshold.
        damping: weight kept on the previous iterate, in ``[0, 1)``; 0 is plain iteration.
        coupled: ``f`` couples samples: stop on the whole batch and return one iterate for all samples.

    Returns ``(z_star, info)`` as described in the module docstring (best iterate per sample, or the best
    batch iterate with ``coupled=True``).
    """
    _check_args("naive", z0, max_iter, tol)
    if not 0.0 <= damping < 1.0:
        raise ValueError(f"naive: damping must be in [0, 1), got {damping}")
    shape = z0.shape
    fn = _flat_map(f, shape)
    z = z0.reshape(shape[0], -1)
    fz = fn(z)
    state = _Tracker(z, *_residuals_from(fz - z, fz), tol, coupled)
    for _ in range(1, int(max_iter)):
        if state.n_active == 0:
            break
        step = fz if damping == 0.0 else torch.lerp(fz, z, damping)
        z = state.select_active(step, z)
        fz = fn(z)
        state.update(z, *_residuals_from(fz - z, fz))
    return state.result(shape)


@register("solver", "anderson")
def anderson(
    f: Map,
    z0: torch.Tensor,
    /,
    *,
    max_iter: int = 50,
    tol: float = 1e-4,
    m: int = 5,
    beta: float = 1.0,
    lam: float = 1e-4,
    coupled: bool = False,
) -> SolverResult:
    """Anderson acceleration (type II), batched, with per-sample (or, ``coupled``, whole-batch) stopping.

    Keeps the last ``m`` pairs ``(f(z_i), g_i = f(z_i) - z_i)``. Each step finds weights ``alpha``
    (summing to 1) minimising ``||sum_i alpha_i g_i||² + reg ||alpha||²`` by solving the bordered
    ``(n+1) x (n+1)`` KKT system with one batched ``torch.linalg.solve``, then moves to
    ``z = sum_i alpha_i (f(z_i) - (1 - beta) g_i)``. The Gram matrix ``g_iᵀ g_j`` is updated one row per
    step (O(m·d), not O(m²·d)). ``reg = lam · mean_i ||g_i||²`` is relative to the residual scale, so the
    regulariser neither dominates near convergence nor vanishes far from it. A sample whose weights come
    out non-finite takes a plain step instead.

    Args:
        f: the map, ``(N, *) -> (N, *)``.
        z0: start, ``(N, *)``.
        max_iter: budget of ``f`` evaluations.
        tol: per-sample relative residual threshold.
        m: history size (>= 1; 1 is plain damped iteration).
        beta: mixing parameter in ``(0, 1]``; 1 takes the mixed ``f`` values.
        lam: relative Tikhonov regulariser of the least-squares problem (>= 0).
        coupled: ``f`` couples samples: stop on the whole batch and return one iterate for all samples.

    Returns ``(z_star, info)`` as described in the module docstring (best iterate per sample, or the best
    batch iterate with ``coupled=True``).
    """
    _check_args("anderson", z0, max_iter, tol)
    if int(m) < 1:
        raise ValueError(f"anderson: history size m must be >= 1, got {m}")
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"anderson: beta must be in (0, 1], got {beta}")
    if not lam >= 0.0:
        raise ValueError(f"anderson: lam must be >= 0, got {lam}")
    m = int(m)
    shape = z0.shape
    fn = _flat_map(f, shape)
    z = z0.reshape(shape[0], -1)
    bsz, dim = z.shape
    fz = fn(z)
    g = fz - z
    track = _tracking(fz, z0)
    gg = (g * g).sum(dim=1)
    state = _Tracker(z, *_residuals_from_sq(gg, fz), tol, coupled)

    dtype, device = z.dtype, z.device
    # History in a ring of m slots (slots fill in order, so the first min(k, m) are the valid ones):
    # F_hist[:, i] = f(z_i), G_hist[:, i] = g_i. ``kkt`` is the bordered system [[0, 1ᵀ], [1, GᵀG]]
    # whose lower-right block is the Gram matrix <g_i, g_j>, updated one row/column per step (O(m·d)).
    F_hist = torch.empty(bsz, m, dim, dtype=dtype, device=device)
    G_hist = torch.empty(bsz, m, dim, dtype=dtype, device=device)
    F_hist[:, 0] = fz
    G_hist[:, 0] = g
    kkt = torch.zeros(bsz, m + 1, m + 1, dtype=dtype, device=device)
    kkt[:, 0, 1:] = 1
    kkt[:, 1:, 0] = 1
    kkt[:, 1, 1] = gg
    rhs = torch.zeros(bsz, m + 1, 1, dtype=dtype, device=device)
    rhs[:, 0] = 1
    floor = torch.finfo(dtype).tiny ** 0.5  # keeps the system regular when every g_i is exactly 0

    for k in range(1, int(max_iter)):
        if state.n_active == 0:
            break
        n = min(k, m)
        plain = fz if beta == 1.0 else fz - (1.0 - beta) * g  # the plain (damped) step from the latest pair
        if n == 1:
            cand = plain
        else:
            # [[0, 1ᵀ], [1, GᵀG + reg I]] [nu; alpha] = [1; 0], reg relative to the mean squared residual.
            system = kkt[:, : n + 1, : n + 1].clone()
            diag = system.diagonal(dim1=1, dim2=2)[:, 1:]
            reg = diag.mean(1, keepdim=True).mul_(lam).clamp_min_(floor)
            diag.add_(reg)
            # solve_ex: a singular system gives non-finite weights (handled below), not an exception.
            alpha = torch.linalg.solve_ex(system, rhs[:, : n + 1])[0][:, 1:, 0]  # (B, n)
            cand = _weighted_rows(alpha, F_hist[:, :n])
            if beta != 1.0:
                cand = cand - (1.0 - beta) * _weighted_rows(alpha, G_hist[:, :n])
            # Non-finite weights (s - s is 0 only for finite s): take the plain step instead.
            s = alpha.sum(1, keepdim=True)
            cand = torch.where((s - s) == 0, cand, plain)
        z = state.select_active(cand, z)
        fz = fn(z)
        g = fz - z

        slot = k % m
        filled = min(k + 1, m)
        if track:  # out of place, so that autograd keeps the versions it saved
            F_hist, G_hist, kkt = F_hist.clone(), G_hist.clone(), kkt.clone()
        F_hist[:, slot] = fz
        G_hist[:, slot] = g
        row = _row_dots(g, G_hist[:, :filled])  # <g_new, g_i> for every valid slot, itself included
        kkt[:, slot + 1, 1 : filled + 1] = row
        kkt[:, 1 : filled + 1, slot + 1] = row
        state.update(z, *_residuals_from_sq(row[:, slot], fz))
    return state.result(shape)


@register("solver", "broyden")
def broyden(
    f: Map,
    z0: torch.Tensor,
    /,
    *,
    max_iter: int = 50,
    tol: float = 1e-4,
    m: int = 30,
    restart_ratio: float = 1e3,
    coupled: bool = False,
) -> SolverResult:
    """Limited-memory "good" Broyden root finding on ``g(z) = f(z) - z``, batched.

    The inverse Jacobian of ``g`` is approximated as ``-I + U Vᵀ`` (low rank, at most ``m`` pairs kept in
    a ring; ``-I`` makes the first step the plain step ``f(z)``). The Sherman-Morrison form of the good
    Broyden update adds one pair per step. No line search. Robustness: a pair whose denominator is tiny or
    non-finite is not added; a non-finite step is replaced by the plain step; and a sample whose relative
    residual grows above ``restart_ratio`` times its best one forgets its memory and restarts with a plain
    step from its best point (with ``coupled=True`` the whole batch restarts from the best batch iterate,
    so that every sample stays on one iterate).

    Args:
        f: the map, ``(N, *) -> (N, *)``.
        z0: start, ``(N, *)``.
        max_iter: budget of ``f`` evaluations.
        tol: per-sample relative residual threshold.
        m: number of rank-one updates kept.
        restart_ratio: residual growth (relative to the best so far) that triggers a restart (> 1).
        coupled: ``f`` couples samples: stop on the whole batch and return one iterate for all samples.

    Returns ``(z_star, info)`` as described in the module docstring (best iterate per sample, or the best
    batch iterate with ``coupled=True``).
    """
    _check_args("broyden", z0, max_iter, tol)
    if int(m) < 1:
        raise ValueError(f"broyden: memory m must be >= 1, got {m}")
    if not restart_ratio > 1.0:
        raise ValueError(f"broyden: restart_ratio must be > 1, got {restart_ratio}")
    m = int(m)
    shape = z0.shape
    fn = _flat_map(f, shape)
    z = z0.reshape(shape[0], -1)
    bsz, dim = z.shape
    fz = fn(z)
    g = fz - z
    track = _tracking(fz, z0)
    state = _Tracker(z, *_residuals_from(g, fz), tol, coupled)
    best_fz = fz

    # Inverse Jacobian of g ≈ -I + sum_j u_j v_jᵀ, pairs stored as rows of U and V, shape (B, m, d).
    U = torch.zeros(bsz, m, dim, dtype=z.dtype, device=z.device)
    V = torch.zeros_like(U)
    eps = torch.finfo(z.dtype).eps

    def low_rank(vec: torch.Tensor, left: torch.Tensor, right: torch.Tensor, n: int) -> torch.Tensor:
        # sum_j left_j (right_j · vec) over the n valid pairs, batched: (B, d) -> (B, d)
        if n == 0:
            return torch.zeros_like(vec)
        return _weighted_rows(_row_dots(vec, right[:, :n]), left[:, :n])

    for k in range(1, int(max_iter)):
        if state.n_active == 0:
            break
        active = state.active
        n = min(k - 1, m)  # pairs stored so far (slots fill in order)
        step = g - low_rank(g, U, V, n) if n else g  # -H g
        cand = torch.where(_finite_rows(step)[:, None], z + step, fz)
        z_new = _select(active, state.n_active, cand, z)
        fz_new = fn(z_new)
        g_new = fz_new - z_new
        abs_r, rel_r = _residuals_from(g_new, fz_new)
        improved, n_improved = state.update(z_new, abs_r, rel_r)
        best_fz = _select(improved, n_improved, fz_new, best_fz)

        # Good Broyden: H += (s - H y) (Hᵀ s)ᵀ / (sᵀ H y), with s = Δz, y = Δg.
        s, y = z_new - z, g_new - g
        v = -s + low_rank(s, V, U, n)  # Hᵀ s
        denom = (v * y).sum(dim=1)
        u = (s + y - low_rank(y, U, V, n)) / torch.where(denom == 0, 1.0, denom)[:, None]  # (s - H y) / denom
        good = (denom.abs() > eps * v.norm(dim=1) * y.norm(dim=1)) & _finite_rows(u)
        good = good & _finite_rows(v) & active
        blowup = active & ~(rel_r <= restart_ratio * state.best_rel)  # also catches NaN residuals
        add = (good & ~blowup)[:, None]
        if track:
            U, V = U.clone(), V.clone()
        slot = (k - 1) % m
        U[:, slot] = torch.where(add, u, 0.0)
        V[:, slot] = torch.where(add, v, 0.0)
        if bool(blowup.any()):  # forget the memory, restart from the best point with a plain step
            if coupled:  # the best point is one batch iterate (and best_fz is f of that whole batch)
                blowup = state.active
            keep = (~blowup).to(z.dtype)[:, None, None]
            U, V = U * keep, V * keep
            z = torch.where(blowup[:, None], state.best_z, z_new)
            fz = torch.where(blowup[:, None], best_fz, fz_new)
        else:
            z, fz = z_new, fz_new
        g = fz - z
    return state.result(shape)


for _solver in (naive, anderson, broyden):
    _solver.__lyadeq_zoo_supplied__ = ("coupled",)  # set by the DEQ layer from its cell, not a config key
