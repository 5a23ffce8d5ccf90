"""Per-sample stability diagnostics of a DEQ model at its equilibrium (exported as ``lz.stability_report``)."""

from __future__ import annotations

import torch
from torch import nn

from .deq.layer import DEQLayer

# Solver diagnostics read from the model's DEQ layer when the model's own last_info does not carry them.
SOLVER_KEYS = ("converged", "abs_residual", "n_f_evals")


def stability_report(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``model`` on images ``x`` ``(N, C, H, W)`` in [0, 1] and return per-sample ``(N,)`` tensors.

    Keys, all measured at the returned equilibrium z* (the whole batch as returned, so they hold in train
    mode too, where BatchNorm couples the samples):

    * ``nstep`` (int64): the index of the returned iterate, counted in ``f`` evaluations (1 is the start
      ``z0``): where the solver found z*, not the iterations it spent (that is ``n_f_evals``).
    * ``rel_residual``: ``||f(z*) - z*|| / (||f(z*)|| + 1e-8)``; ``abs_residual``: ``||f(z*) - z*||``
      (norms over the state of one sample).
    * ``converged`` (bool): ``rel_residual <= tol`` of the forward solver.
    * ``n_f_evals`` (int64): the (batched) ``f`` evaluations the solve made, the same for every sample
      (every sample is evaluated at each of them).
    * for Lyapunov models also ``lyapunov_value`` V(z*) and ``lyapunov_decrease`` ``∇V(z*)ᵀF̂(z*) + c·V(z*)``
      (<= 0 certifies the decrease condition at z*).

    The forward pass runs under ``torch.no_grad()``; the Lyapunov module computes ∇V in closed form (with
    autograd locally only for ``grad_method: autograd``).
    The model is used in its current mode (call ``model.eval()`` first for the deployed map: in train mode a
    BatchNorm model would also update its running statistics once). Works for any model that stores its last
    forward's diagnostics in ``model.last_info`` (as :class:`lyadeq_zoo.models.DEQClassifier` does); the keys
    of :data:`SOLVER_KEYS` missing there are taken from the model's DEQ layer when it has exactly one.
    Raises TypeError for a model without such diagnostics, e.g. one without a DEQ layer (``last_info`` None
    and no DEQ layer: a ``plain_*`` baseline).
    """
    if not hasattr(model, "last_info"):
        raise TypeError(
            f"{type(model).__name__} keeps no solver diagnostics (no .last_info attribute); stability_report "
            "needs a DEQ model such as lz.create_model('lyadeq_mnist')"
        )
    layers = [module for module in model.modules() if isinstance(module, DEQLayer)]
    if not layers and model.last_info is None:
        raise TypeError(
            f"{type(model).__name__} has no DEQ layer (built with model.cell: null, as the zoo's plain_* "
            "baselines): it solves no equilibrium, so there is no solver or Lyapunov diagnostic to report; "
            "stability_report needs a DEQ model such as lz.create_model('lyadeq_mnist')"
        )
    with torch.no_grad():
        model(x)
    return last_forward_report(model)


def last_forward_report(model: nn.Module) -> dict[str, torch.Tensor]:
    """:func:`stability_report`'s per-sample tensors of the forward pass ``model`` ran last (read from its
    ``last_info`` and its DEQ layer's), without running it again; for a caller that needs the logits of that same
    pass too (``lz.evaluate`` predicts and measures the solver in one pass)."""
    layers = [module for module in model.modules() if isinstance(module, DEQLayer)]
    info = dict(model.last_info)
    missing = [k for k in ("nstep", "rel_residual") if k not in info]
    if missing:
        raise RuntimeError(f"{type(model).__name__}.last_info lacks {missing} after a forward pass")
    if len(layers) == 1 and layers[0].last_info is not None:
        layer_info = layers[0].last_info
        info.update({k: layer_info[k] for k in SOLVER_KEYS if k in layer_info and k not in info})
    n = info["nstep"].shape[0]
    if "n_f_evals" in info and info["n_f_evals"].dim() == 0:
        info["n_f_evals"] = info["n_f_evals"].expand(n)
    return {k: v.detach().clone() for k, v in info.items()}
