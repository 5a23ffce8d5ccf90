"""Imports every built-in component module so that each registers itself.

One import line per module; a module is added here once it imports cleanly.
"""

from . import (
    attacks,  # noqa: F401
    backbones,  # noqa: F401
    data,  # noqa: F401
    deq,  # noqa: F401  (solvers, backward modes, DEQLayer)
    heads,  # noqa: F401
    lyapunov,  # noqa: F401
    models,  # noqa: F401
    objectives,  # noqa: F401
    training,  # noqa: F401
)
from .deq import cells  # noqa: F401
