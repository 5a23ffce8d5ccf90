"""The DEQ layer: ``z* = f(z*, x)`` found by a registered solver, gradient attached by a backward mode.

``DEQLayer(cell, solver=spec, backward=spec).forward(x) -> (z_star, info)`` with ``z0 = zeros_like(x)``
and ``f = lambda z: cell(z, x)``. ``x`` is the injection, ``(N, width)`` for vector cells or
``(N, C, H, W)`` for convolutional ones; ``z_star`` has its shape. ``info`` holds the solver's per-sample
``nstep``, ``rel_residual``, ``abs_residual``, ``converged`` (all ``(N,)``) and ``n_f_evals`` (0-dim),
measured at the returned ``z_star`` (see :mod:`lyadeq_zoo.deq.solvers`). The last forward's info is also
kept in ``layer.last_info``.

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

Temporary changes (attacks, benchmarks): :func:`override_backward` swaps the backward mode and
:func:`override_solver` the forward solver options of every DEQ layer inside a model, restoring them on
exit. Neither changes ``model.config``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..config import validate_component
from ..registry import build_component, get_component
from .solvers import SolverResult, in_solver_phase, solver_phase

__all__ = ["DEQLayer", "in_solver_phase", "override_backward", "override_solver", "solver_phase"]


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
        self._solver_fn = get_component("solver", spec["type"])
        self._solver_options = {key: value for key, value in spec.items() if key != "type"}

    def _set_backward(self, spec: dict[str, Any]) -> None:
        spec = dict(spec)
        validate_component("backward", spec, ("backward",))
        self.backward_spec = spec
        self.backward_mode = build_component("backward", spec)

    def solve(self, f: Any, z0: torch.Tensor) -> SolverResult:
        """The forward solver with its options bound, run inside the solver phase."""
        with solver_phase():
            return self._solver_fn(f, z0, **self._solver_options)

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x``: injection ``(N, *)``. Returns ``(z_star, info)``, ``z_star`` shaped like ``x``."""
        z0 = torch.zeros_like(x)

        def f(z: torch.Tensor) -> torch.Tensor:
            return self.cell(z, x)

        z_star, info = self.backward_mode(f, z0, self.solve)
        self.last_info = info
        return z_star, info

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
