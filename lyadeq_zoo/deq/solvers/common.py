"""What the solvers share: residuals, argument checks, batched row operations, the stopping and
best-iterate bookkeeping (:class:`Tracker`), the solver-phase flag and :func:`run_solver`.

States inside a solver are flat ``(N, d)``: ``N`` samples, ``d`` = the product of the non-batch dims.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

Map = Callable[[torch.Tensor], torch.Tensor]
SolverResult = tuple[torch.Tensor, dict[str, torch.Tensor]]

RESIDUAL_EPS = 1e-8  # the "+ 1e-8" of the relative residual
COUPLED_SUPPLIED = ("coupled",)  # set by the DEQ layer from its cell, not a config key

_SOLVER_PHASE: contextvars.ContextVar[bool] = contextvars.ContextVar("lyadeq_zoo_solver_phase", default=False)


# -- the solver phase and running any registered solver ---------------------------------------------------
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


# -- arguments and the flat map ---------------------------------------------------------------------------
def check_args(name: str, z0: torch.Tensor, max_iter: int, tol: float) -> None:
    """Raise ValueError (prefixed with the solver ``name``) unless ``z0``, ``max_iter`` and ``tol`` are usable."""
    if not isinstance(z0, torch.Tensor) or z0.dim() < 1:
        raise ValueError(f"{name}: z0 must be a tensor with a batch dimension first, got {type(z0).__name__}")
    if not z0.is_floating_point():
        raise ValueError(f"{name}: z0 must be a floating-point tensor, got dtype {z0.dtype}")
    if int(max_iter) < 1:
        raise ValueError(f"{name}: max_iter must be >= 1 (the f-evaluation budget), got {max_iter}")
    if not tol >= 0:
        raise ValueError(f"{name}: tol must be a non-negative relative residual, got {tol}")


def flat_map(f: Map, shape: torch.Size) -> Map:
    """``f`` on flattened ``(N, d)`` states; checks that ``f`` keeps the shape."""

    def flat(z: torch.Tensor) -> torch.Tensor:
        out = f(z.view(shape))
        if out.shape != shape:
            raise ValueError(f"the fixed-point map must keep the state shape {tuple(shape)}, got {tuple(out.shape)}")
        return out.reshape(shape[0], -1)

    return flat


def tracking(fz: torch.Tensor, z0: torch.Tensor) -> bool:
    """Whether autograd records the iterations (then history buffers must be updated out of place)."""
    return torch.is_grad_enabled() and (fz.requires_grad or z0.requires_grad)


# -- residuals of flat states -----------------------------------------------------------------------------
def residuals_from(g: torch.Tensor, fz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``residuals`` for flat ``(N, d)`` tensors when ``g = fz - z`` is already at hand."""
    with torch.no_grad():
        diff = g.norm(dim=1)
        return diff, diff / (fz.norm(dim=1) + RESIDUAL_EPS)


def residuals_from_sq(gg: torch.Tensor, fz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``residuals`` for flat ``(N, d)`` tensors when ``gg = ||f(z) - z||²`` per sample is already at hand."""
    with torch.no_grad():
        diff = gg.sqrt()
        return diff, diff / (fz.norm(dim=1) + RESIDUAL_EPS)


def worst(rel_r: torch.Tensor) -> torch.Tensor:
    """The batch's worst relative residual (0-dim), NaN counted as +inf."""
    return rel_r.nan_to_num(nan=float("inf"), posinf=float("inf")).max()


# -- batched row operations -------------------------------------------------------------------------------
def finite_rows(t: torch.Tensor) -> torch.Tensor:
    """Per row of ``(N, d)``: True where every entry is finite (two kernels instead of isfinite's four).

    A row sum is finite iff its entries are (barring overflow of huge finite entries, which is treated as
    non-finite, the safe side): ``s - s`` is 0 for finite ``s`` and NaN for ±inf or NaN.
    """
    s = t.sum(dim=1)
    return (s - s) == 0


def select(mask: torch.Tensor, count: int, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
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


def weighted_rows(weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``sum_i weights[:, i] rows[:, i]``: ``(B, n)``, ``(B, n, d)`` -> ``(B, d)``."""
    if rows.shape[-1] <= _SMALL_DIM:
        return (weights.unsqueeze(2) * rows).sum(1)
    return torch.bmm(weights.unsqueeze(1), rows).squeeze(1)


def row_dots(vec: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``<vec, rows[:, i]>`` for every i: ``(B, d)``, ``(B, n, d)`` -> ``(B, n)``."""
    if rows.shape[-1] <= _SMALL_DIM:
        return (rows * vec.unsqueeze(1)).sum(2)
    # (1 x d)(d x n) per sample: several times faster on CPU than the (n x d)(d x 1) orientation.
    return torch.bmm(vec.unsqueeze(1), rows.transpose(1, 2)).squeeze(1)


# -- stopping and the iterate to return -------------------------------------------------------------------
class Tracker:
    """The iterate to return, its residuals and step, and the converged/active masks.

    Per-sample mode (``coupled=False``): the best iterate per sample; converged samples are frozen.
    Whole-batch mode (``coupled=True``): the best batch iterate (lowest worst-sample residual); nothing is
    frozen, and ``converged`` holds the flags of that iterate. ``z``: the first evaluated iterate ``(N, d)``;
    ``abs_r``, ``rel_r``: its residuals ``(N,)``.
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
            self.best_worst = worst(rel_r)
            self._everyone = torch.ones_like(self.converged)
            self._no_one = torch.zeros_like(self.converged)

    def update(self, z: torch.Tensor, abs_r: torch.Tensor, rel_r: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Record the newly evaluated iterate ``z``; returns the per-sample ``improved`` mask and its count.

        One host sync (the two counts), which also serves the stopping test.
        """
        self.n_evals += 1
        if self.coupled:
            return self._update_batch(z, abs_r, rel_r)
        return self._update_per_sample(z, abs_r, rel_r)

    def _update_per_sample(self, z: torch.Tensor, abs_r: torch.Tensor, rel_r: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Per-sample mode: each sample keeps the iterate with its lowest residual so far."""
        # NaN residuals compare False, so a non-finite iterate never becomes the best one.
        improved = rel_r < self.best_rel
        self.converged = self.converged | (rel_r <= self.tol)
        n_improved, self.n_converged = torch.stack((improved, self.converged)).sum(1).tolist()
        if n_improved == self.batch:  # the common case while converging: no masking at all
            self.best_z, self.best_abs, self.best_rel = z, abs_r, rel_r
            self.best_step = torch.full_like(self.best_step, self.n_evals)
        elif n_improved:
            self.best_z = select(improved, n_improved, z, self.best_z)
            self.best_abs = torch.where(improved, abs_r, self.best_abs)
            self.best_rel = torch.where(improved, rel_r, self.best_rel)
            self.best_step = self.best_step.masked_fill(improved, self.n_evals)
        return improved, n_improved

    def _update_batch(self, z: torch.Tensor, abs_r: torch.Tensor, rel_r: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Whole-batch mode: ``z`` replaces the returned iterate iff its worst residual is lower."""
        batch_worst = worst(rel_r)
        converged = rel_r <= self.tol
        better, n_converged = torch.stack((batch_worst < self.best_worst, converged.sum())).tolist()
        if not better:
            return self._no_one, 0
        self.best_z, self.best_abs, self.best_rel, self.best_worst = z, abs_r, rel_r, batch_worst
        self.best_step = torch.full_like(self.best_step, self.n_evals)
        self.converged, self.n_converged = converged, n_converged
        return self._everyone, self.batch

    def select_active(self, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """``new`` for the samples still iterating, ``old`` (frozen) for the converged ones."""
        if self.n_converged == 0 or self.coupled:
            return new
        return select(self.active, self.n_active, new, old)

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
        """``(z_star, info)`` with ``z_star`` reshaped to the caller's ``shape`` (see the package docstring)."""
        info = {
            "nstep": self.best_step,
            "rel_residual": self.best_rel,
            "abs_residual": self.best_abs,
            "converged": self.converged,
            "n_f_evals": torch.tensor(self.n_evals, dtype=torch.int64),
        }
        return self.best_z.reshape(shape), info
