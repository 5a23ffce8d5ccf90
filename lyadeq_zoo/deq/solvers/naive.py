"""The ``naive`` solver: damped fixed-point (Picard) iteration."""

from __future__ import annotations

import torch

from ...registry import register
from .common import COUPLED_SUPPLIED, Map, SolverResult, Tracker, check_args, flat_map, residuals_from


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

    Returns ``(z_star, info)`` as described in the package docstring (best iterate per sample, or the best
    batch iterate with ``coupled=True``).
    """
    check_args("naive", z0, max_iter, tol)
    if not 0.0 <= damping < 1.0:
        raise ValueError(f"naive: damping must be in [0, 1), got {damping}")
    shape = z0.shape
    fn = flat_map(f, shape)
    z = z0.reshape(shape[0], -1)
    fz = fn(z)
    state = Tracker(z, *residuals_from(fz - z, fz), tol, coupled)
    for _ in range(1, int(max_iter)):
        if state.n_active == 0:
            break
        step = fz if damping == 0.0 else torch.lerp(fz, z, damping)
        z = state.select_active(step, z)
        fz = fn(z)
        state.update(z, *residuals_from(fz - z, fz))
    return state.result(shape)


naive.__lyadeq_zoo_supplied__ = COUPLED_SUPPLIED
