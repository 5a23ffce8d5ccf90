"""The fixed-point core: solvers (kind ``solver``), backward modes (kind ``backward``) and the DEQ layer.

See :mod:`lyadeq_zoo.deq.solvers` for the solver contract, :mod:`lyadeq_zoo.deq.backward` for how
gradients are attached, and :mod:`lyadeq_zoo.deq.layer` for ``DEQLayer`` and the override helpers.
"""

from .backward import IFT, Phantom, Unroll
from .layer import DEQLayer, in_solver_phase, override_backward, override_solver, solver_phase
from .solvers import anderson, broyden, naive, residuals

__all__ = [
    "IFT",
    "DEQLayer",
    "Phantom",
    "Unroll",
    "anderson",
    "broyden",
    "in_solver_phase",
    "naive",
    "override_backward",
    "override_solver",
    "residuals",
    "solver_phase",
]
