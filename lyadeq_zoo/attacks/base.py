"""The attack contract, the restart driver and :func:`create_attack`.

An attack is an object built by :func:`create_attack` (its constructor arguments are its config keys)
and called as ``attack(model, x, y) -> x_adv``:

* ``model`` is any ``nn.Module`` mapping images ``(N, C, H, W)`` in ``[0, 1]`` to logits ``(N, K)``;
* ``x`` is a float tensor ``(N, C, H, W)`` in ``[0, 1]``, ``y`` an integer tensor ``(N,)`` of labels
  (checked by :func:`.threat_model.check_inputs`: uint8 images, numpy arrays, values outside [0, 1], NaN,
  shapes or labels that do not fit the model raise :class:`~lyadeq_zoo.errors.InputError`; an empty batch
  gives an empty ``x_adv``);
* ``x_adv`` has the shape of ``x``, lies in ``[0, 1]`` and within the l_inf ball of radius ``eps``
  around ``x`` (``|x_adv - x| <= eps`` elementwise; see :mod:`.threat_model`).

The model is run in the mode it is in (``evaluate`` puts it in eval mode); its train/eval flag and
its parameters' ``requires_grad`` are never changed, and no parameter ``.grad`` is written: input
gradients come from ``torch.autograd.grad`` with respect to the input only (see :mod:`.gradients`).

Parametrized weights (``torch.nn.utils.parametrize``, e.g. the orthogonal head's ``matrix_exp``) are computed
once per attack call, not at every step: the whole call runs inside ``parametrize.cached()``. The parameters
do not change during an attack, so the function attacked and its input gradient are unchanged; the cache is
dropped when the call returns, so a training step that calls an attack updates and recomputes them as usual.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..config import accepted_keys
from ..errors import AttackNotApplicable
from ..registry import get_component
from .gradients import has_deq_layer, normalize_grad_mode
from .losses import LOSSES, attack_loss
from .threat_model import check_inputs, parse_eps, project


def create_attack(name: str, **options: Any) -> Attack:
    """The attack registered as ``name`` built with ``options`` (torchattacks' names: ``eps``,
    ``alpha``, ``steps``, ``random_start``, plus ``restarts``, ``loss``, ``grad_mode``, ``seed`` ...).

    Unknown names list the registered attacks and the closest match; unknown options raise a
    ``TypeError`` naming the accepted ones.
    """
    cls = get_component("attack", name)
    try:
        return cls(**options)
    except TypeError as err:
        allowed, _ = accepted_keys(cls)
        raise TypeError(f"attack {name!r}: {err}. Accepted options: {', '.join(allowed)}") from err


class Attack:
    """Base of all attacks: checks inputs, sets up randomness and the gradient mode, runs restarts.

    Subclasses implement :meth:`run_once` (one restart on a sub-batch). The base class keeps, per
    sample, the first restart that fools the model, else the one with the highest loss. Whether a
    sample is fooled is always judged by the model as given (default gradient mode), never by the
    swapped-backward copy used to compute gradients.
    """

    #: "white-box" (uses the model's input gradient), "score-based" (only logits), or "transfer".
    threat = "white-box"
    #: used by the masking checks: single-step attacks should never beat multi-step ones.
    single_step = False

    def __init__(
        self,
        eps: float | str = 8 / 255,
        restarts: int = 1,
        loss: Literal["ce", "cw", "dlr"] = "ce",
        grad_mode: str | dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> None:
        self.eps = parse_eps(eps)
        if int(restarts) < 1:
            raise ValueError(f"restarts must be >= 1, got {restarts!r}")
        self.restarts = int(restarts)
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        self.loss = loss
        self.grad_mode = normalize_grad_mode(grad_mode)
        self.seed = seed

    # -- to override ------------------------------------------------------------------------------
    def run_once(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None, restart: int
    ) -> torch.Tensor:
        """One restart on ``x`` (n, C, H, W); returns candidates in the threat model."""
        raise NotImplementedError

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`AttackNotApplicable` if this attack cannot run on ``model``."""
        if self.grad_mode is not None and not has_deq_layer(model):
            raise AttackNotApplicable(
                f"{type(self).__name__} with grad_mode={self.grad_mode} needs a model with DEQ layers"
            )

    def describe(self) -> dict[str, Any]:
        """The options this attack was built with (JSON-serialisable)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and _is_json_type(v)}

    # -- driver -------------------------------------------------------------------------------------
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples ``x_adv`` (same shape as ``x``) in the eps-ball around ``x`` and [0, 1]."""
        x, y = check_inputs(x, y, model)
        self.check_model(model)
        # Parameters are fixed during an attack: compute parametrized weights once for all its forward passes.
        with parametrize.cached():
            return self._attack(model, x, y)

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        y = y.detach().to(x.device)
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=x.device)
            generator.manual_seed(int(self.seed))
        best = x.clone()
        if self.eps == 0 or x.shape[0] == 0:
            return best
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for restart in range(self.restarts):
            todo = (~fooled).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            candidate = self.run_once(model, x[todo], y[todo], generator, restart)
            candidate = project(candidate.detach(), x[todo], self.eps)
            with torch.no_grad():
                logits = model(candidate)
                loss = attack_loss(self.loss, logits, y[todo])
            success = logits.argmax(1) != y[todo]
            better = success | (loss > best_loss[todo])
            idx = todo[better]
            best[idx] = candidate[better]
            best_loss[idx] = loss[better]
            fooled[todo[success]] = True
        return best

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        return f"{type(self).__name__}({options})"


def _is_json_type(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, dict, tuple))


def track_best(
    best: torch.Tensor,
    best_loss: torch.Tensor,
    found: torch.Tensor,
    x_now: torch.Tensor,
    loss_now: torch.Tensor,
    logits_now: torch.Tensor,
    y: torch.Tensor,
) -> None:
    """In place: per sample keep the first iterate that is misclassified, else the highest-loss one."""
    success = logits_now.argmax(1) != y
    better = ~found & (success | (loss_now > best_loss))
    best[better] = x_now[better]
    best_loss[better] = loss_now[better]
    found |= success
