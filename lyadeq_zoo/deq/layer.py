"""The DEQ layer: ``z* = f(z*, x)`` found by a registered solver, gradient attached by a backward mode.

``DEQLayer(cell, solver=spec, backward=spec).forward(x) -> (z_star, info)`` with ``z0 = zeros_like(x)``
and ``f = lambda z: cell(z, x)``. ``x`` is the injection, ``(N, width)`` for vector cells or
``(N, C, H, W)`` for convolutional ones; ``z_star`` has its shape. ``info`` holds the solver's per-sample
``nstep``, ``rel_residual``, ``abs_residual``, ``converged`` (all ``(N,)``) and ``n_f_evals`` (0-dim),
true at the returned ``z_star`` as a whole batch (see :mod:`lyadeq_zoo.deq.solvers`). The last forward's
info is also kept in ``layer.last_info``.

Cells that couple samples
-------------------------
With BatchNorm normalising with batch statistics (train mode), ``f(z)[i]`` depends on every ``z[j]``:
freezing converged samples, or returning samples taken from different iterations, would change the very
residuals being reported. Every forward the layer asks :func:`couples_samples` whether the cell couples
samples and runs the solver accordingly (:func:`lyadeq_zoo.deq.solvers.run_solver`): per-sample stopping
for a per-sample map (eval mode, ``norm: layer | none``), whole-batch stopping with one returned iterate
when coupled. The ``ift`` adjoint solve follows the forward (its map is coupled too).

Solver phase (for BatchNorm and other stateful cells)
-----------------------------------------------------
The solver calls ``f`` tens of times per forward. Every call the layer's solver makes runs inside
:func:`solver_phase` (a context variable), and :func:`in_solver_phase` returns True there. The calls
that a backward mode makes with grad to attach the gradient (``ift``: one ``f(z*)``; ``phantom``: the
last of its ``k`` steps) run outside it; ``unroll`` differentiates the solver's own calls, all inside.
With grad disabled the only calls are the solver's. A cell that must do something once per forward
(e.g. update BatchNorm running statistics) can therefore either test ``in_solver_phase()`` or, more
robustly since not every mode makes a call outside the phase, let its parent model do it after the
layer returns (what ``lyadeq_zoo.deq.cells`` does).

The solver's path: :meth:`DEQLayer.iterates` runs the plain fixed-point iteration of the cell from ``z0`` for a
given number of steps under autograd (for attacks through intermediate states, which must not rely on the
backward mode).

Temporary changes (attacks, benchmarks): :func:`override_backward` swaps the backward mode and
:func:`override_solver` the forward solver options of every DEQ layer inside a model, restoring them on
exit. Neither changes ``model.config``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..config import validate_component
from ..registry import build_component, get_component
from .solvers import Map, SolverResult, in_solver_phase, run_solver, solver_phase

__all__ = [
    "BoundSolve",
    "DEQLayer",
    "couples_samples",
    "in_solver_phase",
    "override_backward",
    "override_solver",
    "solver_phase",
]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def couples_samples(cell: nn.Module) -> bool:
    """Whether ``cell(z, x)[i]`` may depend on the other samples of the batch, in the cell's current mode.

    A cell can say so itself with a ``couples_samples`` attribute (bool, or a property); otherwise it couples
    iff it holds a BatchNorm that normalises with batch statistics: one in train mode, or one without
    running statistics (``track_running_stats=False``) in any mode. LayerNorm, GroupNorm and InstanceNorm
    are per sample.
    """
    declared = getattr(cell, "couples_samples", None)
    if declared is not None:
        return bool(declared)
    return any(
        isinstance(module, _BATCH_NORMS) and (module.training or module.running_mean is None)
        for module in cell.modules()
    )


@dataclasses.dataclass(frozen=True)
class BoundSolve:
    """What a backward mode receives as ``solve``: ``solve(f, z0) -> (z_star, info)``.

    The layer's forward solver with its ``options`` bound, run inside :func:`solver_phase` through
    :func:`lyadeq_zoo.deq.solvers.run_solver`. ``coupled``: whether ``f`` couples samples (read by ``ift`` for
    its adjoint solve).
    """

    solver: Callable[..., SolverResult]
    options: Mapping[str, Any]
    coupled: bool

    def __call__(self, f: Map, z0: torch.Tensor) -> SolverResult:
        with solver_phase():
            return run_solver(self.solver, f, z0, self.options, coupled=self.coupled)


class DEQLayer(nn.Module):
    """Fixed point of ``cell(z, x)`` in ``z``.

    Args:
        cell: module with ``forward(z, x) -> f(z, x)``, same shape as ``z``.
        solver: forward solver spec, e.g. ``{"type": "anderson", "max_iter": 30, "tol": 1e-4, "m": 5}``.
        backward: backward mode spec, e.g. ``{"type": "ift"}`` or ``{"type": "phantom", "k": 5}``.
    """

    def __init__(self, cell: nn.Module, solver: dict[str, Any], backward: dict[str, Any]) -> None:
        super().__init__()
        self.cell = cell
        self._set_solver(solver)
        self._set_backward(backward)
        self.last_info: dict[str, torch.Tensor] | None = None

    # -- configuration --------------------------------------------------------------------------
    def _set_solver(self, spec: dict[str, Any]) -> None:
        spec = dict(spec)
        validate_component("solver", spec, ("solver",))
        self.solver_spec = spec
        solver = get_component("solver", spec["type"])
        options = {key: value for key, value in spec.items() if key != "type"}
        self._bound = {coupled: BoundSolve(solver, options, coupled) for coupled in (False, True)}

    def _set_backward(self, spec: dict[str, Any]) -> None:
        spec = dict(spec)
        validate_component("backward", spec, ("backward",))
        self.backward_spec = spec
        self.backward_mode = build_component("backward", spec)

    def solve(self, f: Map, z0: torch.Tensor) -> SolverResult:
        """The forward solver with its options bound, run inside the solver phase, for the cell's mode."""
        return self._bound[couples_samples(self.cell)](f, z0)

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x``: injection ``(N, *)``. Returns ``(z_star, info)``, ``z_star`` shaped like ``x``."""
        z0 = torch.zeros_like(x)

        def f(z: torch.Tensor) -> torch.Tensor:
            return self.cell(z, x)

        z_star, info = self.backward_mode(f, z0, self._bound[couples_samples(self.cell)])
        self.last_info = info
        return z_star, info

    def iterates(self, x: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """The path ``[z_0, z_1, ..., z_steps]`` of the plain fixed-point iteration ``z_{k+1} = cell(z_k, x)``
        from ``z_0 = zeros_like(x)``, each shaped like the injection ``x``.

        This is not the layer's solver (no acceleration, no stopping, no best-iterate selection) and no backward
        mode is involved: when autograd is on every step is recorded, so a loss on any ``z_k`` differentiates
        through the steps before it, back to ``x`` and the cell's parameters. Attacks through the solver's
        intermediate states use it (``lyadeq_zoo.attacks.intermediate``). The cell's calls run inside
        :func:`solver_phase`, as the solver's do. ``steps`` >= 1 cell applications.
        """
        if int(steps) < 1:
            raise ValueError(f"iterates: steps must be >= 1, got {steps!r}")
        path = [torch.zeros_like(x)]
        with solver_phase():
            for _ in range(int(steps)):
                path.append(self.cell(path[-1], x))
        return path

    def extra_repr(self) -> str:
        return f"solver={self.solver_spec}, backward={self.backward_spec}"


def _deq_layers(model: nn.Module) -> list[DEQLayer]:
    layers = [module for module in model.modules() if isinstance(module, DEQLayer)]
    if not layers:
        raise ValueError(f"{type(model).__name__} contains no DEQLayer; nothing to override")
    return layers


@contextlib.contextmanager
def override_backward(model: nn.Module, spec: dict[str, Any] | None) -> Iterator[nn.Module]:
    """Temporarily use backward mode ``spec`` (e.g. ``{"type": "unroll"}``) in every DEQLayer of ``model``.

    ``spec=None`` keeps the current modes (handy for "optional override" call sites). Yields ``model``.
    """
    if spec is None:
        yield model
        return
    layers = _deq_layers(model)
    saved = [(layer.backward_spec, layer.backward_mode) for layer in layers]
    try:
        for layer in layers:
            layer._set_backward(spec)
        yield model
    finally:
        for layer, (old_spec, old_mode) in zip(layers, saved, strict=True):
            layer.backward_spec, layer.backward_mode = old_spec, old_mode


@contextlib.contextmanager
def override_solver(model: nn.Module, **options: Any) -> Iterator[nn.Module]:
    """Temporarily change the forward solver of every DEQLayer in ``model``.

    ``options`` merge into each layer's solver spec (``override_solver(model, max_iter=100, tol=1e-6)``);
    passing ``type`` switches solver and starts from that solver's defaults plus the given options
    (``override_solver(model, type="naive", max_iter=200)``). Options are validated against the solver's
    signature. Yields ``model``.
    """
    layers = _deq_layers(model)
    saved = [layer.solver_spec for layer in layers]
    try:
        for layer in layers:
            if "type" in options and options["type"] != layer.solver_spec["type"]:
                layer._set_solver(dict(options))
            else:
                layer._set_solver({**layer.solver_spec, **options})
        yield model
    finally:
        for layer, old in zip(layers, saved, strict=True):
            layer._set_solver(old)
