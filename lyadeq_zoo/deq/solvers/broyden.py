"""The ``broyden`` solver: limited-memory "good" Broyden root finding on ``g(z) = f(z) - z``, batched.

The inverse Jacobian of ``g`` is approximated as ``-I + U Vᵀ`` (low rank, at most ``m`` pairs kept in
a ring; ``-I`` makes the first step the plain step ``f(z)``). The Sherman-Morrison form of the good
Broyden update adds one pair per step. No line search. Robustness: a pair whose denominator is tiny or
non-finite is not added; a non-finite step is replaced by the plain step; and a sample whose relative
residual grows above ``restart_ratio`` times its best one forgets its memory and restarts with a plain
step from its best point (with ``coupled=True`` the whole batch restarts from the best batch iterate,
so that every sample stays on one iterate).
"""

from __future__ import annotations

import torch

from ...registry import register
from .common import (
    COUPLED_SUPPLIED,
    Map,
    SolverResult,
    Tracker,
    check_args,
    finite_rows,
    flat_map,
    residuals_from,
    row_dots,
    select,
    tracking,
    weighted_rows,
)


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
    """Limited-memory "good" Broyden root finding on ``g(z) = f(z) - z``, batched (method: module docstring).

    Args:
        f: the map, ``(N, *) -> (N, *)``.
        z0: start, ``(N, *)``.
        max_iter: budget of ``f`` evaluations.
        tol: per-sample relative residual threshold.
        m: number of rank-one updates kept.
        restart_ratio: residual growth (relative to the best so far) that triggers a restart (> 1).
        coupled: ``f`` couples samples: stop on the whole batch and return one iterate for all samples.

    Returns ``(z_star, info)`` as described in the package docstring (best iterate per sample, or the best
    batch iterate with ``coupled=True``).
    """
    _check_options(z0, max_iter, tol, m, restart_ratio)
    shape = z0.shape
    fn = flat_map(f, shape)
    z = z0.reshape(shape[0], -1)
    fz = fn(z)
    g = fz - z
    state = Tracker(z, *residuals_from(g, fz), tol, coupled)
    inverse = _InverseJacobian(z, int(m), tracking(fz, z0))
    best_fz = fz  # f of the returned iterate, the point a restart goes back to
    for k in range(1, int(max_iter)):
        if state.n_active == 0:
            break
        z, fz, best_fz = _iteration(fn, state, inverse, k, z, fz, g, best_fz, restart_ratio)
        g = fz - z
    return state.result(shape)


broyden.__lyadeq_zoo_supplied__ = COUPLED_SUPPLIED


def _check_options(z0: torch.Tensor, max_iter: int, tol: float, m: int, restart_ratio: float) -> None:
    check_args("broyden", z0, max_iter, tol)
    if int(m) < 1:
        raise ValueError(f"broyden: memory m must be >= 1, got {m}")
    if not restart_ratio > 1.0:
        raise ValueError(f"broyden: restart_ratio must be > 1, got {restart_ratio}")


def _low_rank(vec: torch.Tensor, left: torch.Tensor, right: torch.Tensor, n: int) -> torch.Tensor:
    """``sum_j left_j (right_j · vec)`` over the first ``n`` pairs, batched: ``(B, d) -> (B, d)``."""
    if n == 0:
        return torch.zeros_like(vec)
    return weighted_rows(row_dots(vec, right[:, :n]), left[:, :n])


class _InverseJacobian:
    """``H ≈ -I + sum_j u_j v_jᵀ``, the inverse Jacobian of ``g``; pairs are rows of ``U``, ``V`` ``(B, m, d)``.

    With ``track`` (autograd records the loop) ``U`` and ``V`` are replaced by updated copies instead of
    being written in place, so that autograd keeps the versions it saved.
    """

    def __init__(self, z: torch.Tensor, m: int, track: bool) -> None:
        bsz, dim = z.shape
        self.m, self.track = m, track
        self.U = torch.zeros(bsz, m, dim, dtype=z.dtype, device=z.device)
        self.V = torch.zeros_like(self.U)
        self.eps = torch.finfo(z.dtype).eps

    def newton_step(self, g: torch.Tensor, n: int) -> torch.Tensor:
        """``-H g`` ``(B, d)`` with the first ``n`` pairs (the plain step ``g`` while there are none)."""
        return g - _low_rank(g, self.U, self.V, n) if n else g

    def add_pair(
        self, slot: int, s: torch.Tensor, y: torch.Tensor, n: int, active: torch.Tensor, blowup: torch.Tensor
    ) -> None:
        """Good Broyden update ``H += (s - H y) (Hᵀ s)ᵀ / (sᵀ H y)`` into ``slot``, with ``s = Δz``, ``y = Δg``.

        Only for the ``active`` samples that do not ``blowup`` and whose pair is well defined (the
        denominator is not tiny, the pair is finite); the others get a zero pair.
        """
        v = -s + _low_rank(s, self.V, self.U, n)  # Hᵀ s
        denom = (v * y).sum(dim=1)
        # (s - H y) / denom
        u = (s + y - _low_rank(y, self.U, self.V, n)) / torch.where(denom == 0, 1.0, denom)[:, None]
        good = (denom.abs() > self.eps * v.norm(dim=1) * y.norm(dim=1)) & finite_rows(u)
        good = good & finite_rows(v) & active
        add = (good & ~blowup)[:, None]
        if self.track:
            self.U, self.V = self.U.clone(), self.V.clone()
        self.U[:, slot] = torch.where(add, u, 0.0)
        self.V[:, slot] = torch.where(add, v, 0.0)

    def forget(self, rows: torch.Tensor) -> None:
        """Drop every pair of the samples where ``rows`` ``(B,)`` is True."""
        keep = (~rows).to(self.U.dtype)[:, None, None]
        self.U, self.V = self.U * keep, self.V * keep


def _iteration(
    fn: Map,
    state: Tracker,
    inverse: _InverseJacobian,
    k: int,
    z: torch.Tensor,
    fz: torch.Tensor,
    g: torch.Tensor,
    best_fz: torch.Tensor,
    restart_ratio: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Broyden step from ``z`` (``fz = f(z)``, ``g = fz - z``, all ``(B, d)``), the ``k``-th ``f`` evaluation.

    Returns the next ``(z, f(z))`` (after a restart where the residual blew up) and the updated ``best_fz``.
    """
    active = state.active
    n = min(k - 1, inverse.m)  # pairs stored so far (slots fill in order)
    step = inverse.newton_step(g, n)  # -H g
    cand = torch.where(finite_rows(step)[:, None], z + step, fz)
    z_new = select(active, state.n_active, cand, z)
    fz_new = fn(z_new)
    g_new = fz_new - z_new
    abs_r, rel_r = residuals_from(g_new, fz_new)
    improved, n_improved = state.update(z_new, abs_r, rel_r)
    best_fz = select(improved, n_improved, fz_new, best_fz)
    blowup = active & ~(rel_r <= restart_ratio * state.best_rel)  # also catches NaN residuals
    inverse.add_pair((k - 1) % inverse.m, z_new - z, g_new - g, n, active, blowup)
    if not bool(blowup.any()):
        return z_new, fz_new, best_fz
    # Forget the memory and restart from the best point with a plain step. With coupled=True the best point
    # is one batch iterate (and best_fz is f of that whole batch), so the whole batch restarts.
    if state.coupled:
        blowup = state.active
    inverse.forget(blowup)
    z = torch.where(blowup[:, None], state.best_z, z_new)
    fz = torch.where(blowup[:, None], best_fz, fz_new)
    return z, fz, best_fz
