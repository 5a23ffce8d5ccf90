"""Stability under attack: does a DEQ's solver reach its equilibrium, and does the Lyapunov decrease certificate
hold, at each image's worst-case adversarial input?

:func:`lyadeq_zoo.evaluate` measures, right after every attack run, the model's solver diagnostics at the run's
adversarial inputs (:func:`last_forward_stats`: the diagnostics of the forward pass that judged them, as
:func:`lyadeq_zoo.stability_report` reads them) and keeps,
per eps and image, the statistics of the input that counts (:class:`WorstCaseStability`; statistics, not images:
a few ``(n,)`` tensors per eps). **The worst-case input** of an image at one eps is

* the clean image, for an image the model misclassifies clean (it is never attacked);
* the adversarial example of the *first* run, in suite order, that broke the image at that eps or at a smaller
  one (the balls are nested: an example found at a smaller eps breaks the image at every larger eps too);
* for an image no attack at that eps broke, the example of the *last* attack, in suite order, that ran on it (every
  attack at that eps that ran did run on it: ``all`` attacks on every clean-correct image, ``remaining`` ones on
  the images still robust).

Each ``worst_case`` entry of the result then gets (fractions of all ``n`` images, in [0, 1]):

* ``solver_converged``: the forward solve at the worst-case input reached the solver's ``tol``;
* ``lyapunov_certified`` (Lyapunov models only): the decrease certificate ``∇V(z*)ᵀF̂(z*) + c·V(z*) <= 0`` held
  at the returned ``z*``, up to float rounding: ``<= CERTIFICATE_RTOL·(1 + V(z*))`` (the projection makes it
  exactly 0 where it is active, which float32 reproduces only to about 1e-7·V);
* ``residual_median``, ``residual_max``: of the relative residual ``||f(z*) - z*|| / (||f(z*)|| + 1e-8)`` there
  (null when infinite: a solve that blew up).

Each attack's per-eps entry gets ``solver_not_converged``: how many of the inputs it returned left the solve
unconverged. Models without a DEQ layer (or without solver diagnostics) get none of these keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from ..attacks.gradients import has_deq_layer
from ..fileio import json_safe
from ..stability import last_forward_report

#: The certificate counts as holding when ``lyapunov_decrease <= CERTIFICATE_RTOL * (1 + lyapunov_value)``.
CERTIFICATE_RTOL = 1e-5
STABILITY_NOTE = (
    "solver_converged / lyapunov_certified / residual_*: measured at each image's worst-case input (the example of "
    "the first attack that broke it there or at a smaller eps, else of the last attack that ran on it; the clean "
    "image if misclassified clean); fractions of n."
)


def last_forward_stats(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Per-sample solver diagnostics of the forward pass ``model`` ran last (on a batch (N, C, H, W)), on the CPU,
    read from it without running it again; None for a model without a DEQ layer or without diagnostics (no
    ``last_info``, no ``converged`` flag).

    Keys: ``rel_residual`` (N,) float64, ``converged`` (N,) bool, ``nstep`` (N,) float64 (the returned iterate's
    index in ``f`` evaluations), and for Lyapunov models ``certified`` (N,) bool (see :data:`CERTIFICATE_RTOL`).
    """
    if not has_deq_layer(model) or getattr(model, "last_info", None) is None:
        return None
    report = last_forward_report(model)
    if "converged" not in report:
        return None
    stats = {
        "rel_residual": report["rel_residual"].detach().to("cpu", torch.float64),
        "converged": report["converged"].detach().cpu().bool(),
        "nstep": report["nstep"].detach().to("cpu", torch.float64),
    }
    if "lyapunov_decrease" in report:
        decrease = report["lyapunov_decrease"].detach().to("cpu", torch.float64)
        value = report["lyapunov_value"].detach().to("cpu", torch.float64)
        stats["certified"] = decrease <= CERTIFICATE_RTOL * (1.0 + value.abs())
    return stats


@dataclasses.dataclass
class WorstCaseStability:
    """Per image (``n`` of them) at one eps: the solver statistics at its worst-case input so far.

    ``settled`` marks images whose worst-case input is final (clean-misclassified, or broken by an attack);
    the others are overwritten by every attack that runs on them, so the last one's statistics stay.
    """

    rel_residual: torch.Tensor  # (n,) float64, NaN until recorded
    converged: torch.Tensor  # (n,) bool
    certified: torch.Tensor | None  # (n,) bool, Lyapunov models only
    settled: torch.Tensor  # (n,) bool
    recorded: torch.Tensor  # (n,) bool

    @classmethod
    def empty(cls, n: int, lyapunov: bool) -> WorstCaseStability:
        """Nothing recorded yet for ``n`` images (``lyapunov``: whether to keep the certificate)."""
        return cls(
            rel_residual=torch.full((n,), float("nan"), dtype=torch.float64),
            converged=torch.zeros(n, dtype=torch.bool),
            certified=torch.zeros(n, dtype=torch.bool) if lyapunov else None,
            settled=torch.zeros(n, dtype=torch.bool),
            recorded=torch.zeros(n, dtype=torch.bool),
        )

    def record(self, images: torch.Tensor, stats: Mapping[str, torch.Tensor], settle: torch.Tensor) -> None:
        """Statistics ``stats`` (of :func:`last_forward_stats`, one row per entry of ``images``) at inputs of the images
        ``images`` (int64 indices into the ``n``); settled images are left alone, and ``settle`` (bool, like
        ``images``) settles those whose input is final (the attack broke them)."""
        fresh = ~self.settled[images]
        target = images[fresh]
        self.rel_residual[target] = stats["rel_residual"][fresh]
        self.converged[target] = stats["converged"][fresh]
        if self.certified is not None and "certified" in stats:
            self.certified[target] = stats["certified"][fresh]
        self.recorded[target] = True
        self.settled[images[fresh & settle]] = True

    def summary(self) -> dict[str, float | None]:
        """``solver_converged``, ``lyapunov_certified`` (Lyapunov models) as fractions of all ``n`` images, and
        ``residual_median``, ``residual_max`` of the relative residual over the images recorded (a non-finite
        residual, from a solve that blew up, counts as +inf; an infinite value is written as None)."""
        n = self.converged.numel()
        out: dict[str, float | None] = {"solver_converged": float(self.converged.sum()) / n}
        if self.certified is not None:
            out["lyapunov_certified"] = float(self.certified.sum()) / n
        residual = torch.nan_to_num(self.rel_residual[self.recorded], nan=float("inf"))
        if residual.numel():
            out["residual_median"] = json_safe(float(residual.median()))
            out["residual_max"] = json_safe(float(residual.max()))
        return out


CLEAN_SOLVER_FIELDS = ("nstep", "converged", "certified")


@dataclasses.dataclass
class CleanSolverStats:
    """Per image (``n`` of them): the solver's statistics at the clean input, for the result's ``clean.solver``.

    ``nstep``: (n,) float64, NaN until recorded; ``converged``, ``certified`` (Lyapunov models only): (n,) bool.
    """

    nstep: torch.Tensor
    converged: torch.Tensor
    certified: torch.Tensor | None

    @classmethod
    def empty(cls, n: int, lyapunov: bool) -> CleanSolverStats:
        return cls(
            nstep=torch.full((n,), float("nan"), dtype=torch.float64),
            converged=torch.zeros(n, dtype=torch.bool),
            certified=torch.zeros(n, dtype=torch.bool) if lyapunov else None,
        )

    def record(self, images: slice | torch.Tensor, stats: Mapping[str, torch.Tensor]) -> None:
        """:func:`last_forward_stats` of the clean inputs of ``images`` (a slice or indices into the ``n``)."""
        self.nstep[images] = stats["nstep"]
        self.converged[images] = stats["converged"]
        if self.certified is not None and "certified" in stats:
            self.certified[images] = stats["certified"]

    def summary(self) -> dict[str, float | None]:
        """``mean_steps`` and ``max_steps`` (f evaluations per clean image), ``converged`` and, for Lyapunov models,
        ``lyapunov_certified`` (fractions of all ``n`` clean images)."""
        n = self.converged.numel()
        steps = self.nstep[~torch.isnan(self.nstep)]
        out: dict[str, float | None] = {
            "mean_steps": round(float(steps.mean()), 3) if steps.numel() else None,
            "max_steps": float(steps.max()) if steps.numel() else None,
            "converged": float(self.converged.sum()) / n,
        }
        if self.certified is not None:
            out["lyapunov_certified"] = float(self.certified.sum()) / n
        return out
