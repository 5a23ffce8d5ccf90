"""The ``anderson`` solver: Anderson acceleration (type II), batched.

Keeps the last ``m`` pairs ``(f(z_i), g_i = f(z_i) - z_i)``. Each step finds weights ``alpha``
(summing to 1) minimising ``||sum_i alpha_i g_i||² + reg ||alpha||²`` by solving the bordered
``(n+1) x (n+1)`` KKT system with one batched ``torch.linalg.solve``, then moves to
``z = sum_i alpha_i (f(z_i) - (1 - beta) g_i)``. The Gram matrix ``g_iᵀ g_j`` is updated one row per
step (O(m·d), not O(m²·d)). ``reg = lam · mean_i ||g_i||²`` is relative to the residual scale, so the
regulariser neither dominates near convergence nor vanishes far from it. A sample whose weights come
out non-finite takes a plain step instead.
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
    flat_map,
    residuals_from_sq,
    row_dots,
    tracking,
    weighted_rows,
)


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

    The method is described in the module docstring.

    Args:
        f: the map, ``(N, *) -> (N, *)``.
        z0: start, ``(N, *)``.
        max_iter: budget of ``f`` evaluations.
        tol: per-sample relative residual threshold.
        m: history size (>= 1; 1 is plain damped iteration).
        beta: mixing parameter in ``(0, 1]``; 1 takes the mixed ``f`` values.
        lam: relative Tikhonov regulariser of the least-squares problem (>= 0).
        coupled: ``f`` couples samples: stop on the whole batch and return one iterate for all samples.

    Returns ``(z_star, info)`` as described in the package docstring (best iterate per sample, or the best
    batch iterate with ``coupled=True``).
    """
    _check_options(z0, max_iter, tol, m, beta, lam)
    m = int(m)
    shape = z0.shape
    fn = flat_map(f, shape)
    z = z0.reshape(shape[0], -1)
    fz = fn(z)
    g = fz - z
    gg = (g * g).sum(dim=1)
    state = Tracker(z, *residuals_from_sq(gg, fz), tol, coupled)
    history = _History(z, fz, g, gg, m, tracking(fz, z0))
    for k in range(1, int(max_iter)):
        if state.n_active == 0:
            break
        plain = fz if beta == 1.0 else fz - (1.0 - beta) * g  # the plain (damped) step from the latest pair
        z = state.select_active(history.mix(min(k, m), plain, beta, lam), z)
        fz = fn(z)
        g = fz - z
        state.update(z, *residuals_from_sq(history.push(k, fz, g), fz))
    return state.result(shape)


anderson.__lyadeq_zoo_supplied__ = COUPLED_SUPPLIED


def _check_options(z0: torch.Tensor, max_iter: int, tol: float, m: int, beta: float, lam: float) -> None:
    check_args("anderson", z0, max_iter, tol)
    if int(m) < 1:
        raise ValueError(f"anderson: history size m must be >= 1, got {m}")
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"anderson: beta must be in (0, 1], got {beta}")
    if not lam >= 0.0:
        raise ValueError(f"anderson: lam must be >= 0, got {lam}")


class _History:
    """The last ``m`` pairs and their bordered Gram system, in a ring of ``m`` slots.

    Slots fill in order, so the first ``min(k, m)`` are the valid ones: ``F[:, i] = f(z_i)`` and
    ``G[:, i] = g_i``, both ``(B, m, d)``. ``kkt`` ``(B, m+1, m+1)`` is the bordered system
    ``[[0, 1ᵀ], [1, GᵀG]]`` whose lower-right block is the Gram matrix ``<g_i, g_j>``, updated one
    row/column per step (O(m·d)). With ``track`` (autograd records the loop) the buffers are replaced
    by updated copies instead of being written in place, so that autograd keeps the versions it saved.
    """

    def __init__(
        self, z: torch.Tensor, fz: torch.Tensor, g: torch.Tensor, gg: torch.Tensor, m: int, track: bool
    ) -> None:
        bsz, dim = z.shape
        dtype, device = z.dtype, z.device
        self.m, self.track = m, track
        self.F = torch.empty(bsz, m, dim, dtype=dtype, device=device)
        self.G = torch.empty(bsz, m, dim, dtype=dtype, device=device)
        self.F[:, 0] = fz
        self.G[:, 0] = g
        self.kkt = torch.zeros(bsz, m + 1, m + 1, dtype=dtype, device=device)
        self.kkt[:, 0, 1:] = 1
        self.kkt[:, 1:, 0] = 1
        self.kkt[:, 1, 1] = gg
        self.rhs = torch.zeros(bsz, m + 1, 1, dtype=dtype, device=device)
        self.rhs[:, 0] = 1
        self.floor = torch.finfo(dtype).tiny ** 0.5  # keeps the system regular when every g_i is exactly 0

    def weights(self, n: int, lam: float) -> torch.Tensor:
        """The least-squares weights ``alpha`` ``(B, n)`` of the first ``n`` pairs (non-finite if singular).

        Solves ``[[0, 1ᵀ], [1, GᵀG + reg I]] [nu; alpha] = [1; 0]``, ``reg`` relative to the mean squared
        residual.
        """
        system = self.kkt[:, : n + 1, : n + 1].clone()
        diag = system.diagonal(dim1=1, dim2=2)[:, 1:]
        reg = diag.mean(1, keepdim=True).mul_(lam).clamp_min_(self.floor)
        diag.add_(reg)
        # solve_ex: a singular system gives non-finite weights (handled by mix), not an exception.
        return torch.linalg.solve_ex(system, self.rhs[:, : n + 1])[0][:, 1:, 0]

    def mix(self, n: int, plain: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
        """The next iterate ``(B, d)`` from the first ``n`` pairs; ``plain`` where the weights are unusable."""
        if n == 1:
            return plain
        alpha = self.weights(n, lam)
        cand = weighted_rows(alpha, self.F[:, :n])
        if beta != 1.0:
            cand = cand - (1.0 - beta) * weighted_rows(alpha, self.G[:, :n])
        # Non-finite weights (s - s is 0 only for finite s): take the plain step instead.
        s = alpha.sum(1, keepdim=True)
        return torch.where((s - s) == 0, cand, plain)

    def push(self, k: int, fz: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Store the ``k``-th pair ``(f(z_k), g_k)`` and its Gram row; returns ``||g_k||²`` ``(B,)``."""
        slot = k % self.m
        filled = min(k + 1, self.m)
        if self.track:  # out of place, so that autograd keeps the versions it saved
            self.F, self.G, self.kkt = self.F.clone(), self.G.clone(), self.kkt.clone()
        self.F[:, slot] = fz
        self.G[:, slot] = g
        row = row_dots(g, self.G[:, :filled])  # <g_new, g_i> for every valid slot, itself included
        self.kkt[:, slot + 1, 1 : filled + 1] = row
        self.kkt[:, 1 : filled + 1, slot + 1] = row
        return row[:, slot]
