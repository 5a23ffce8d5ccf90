"""What every attack shares: the threat model, losses, gradient modes, restarts and ``create_attack``.

An attack is an object built by :func:`create_attack` (its constructor arguments are its config keys)
and called as ``attack(model, x, y) -> x_adv``:

* ``model`` is any ``nn.Module`` mapping images ``(N, C, H, W)`` in ``[0, 1]`` to logits ``(N, K)``;
* ``x`` is a float tensor ``(N, C, H, W)`` in ``[0, 1]``, ``y`` an int64 tensor ``(N,)`` of labels;
* ``x_adv`` has the shape of ``x``, lies in ``[0, 1]`` and within the l_inf ball of radius ``eps``
  around ``x`` (``|x_adv - x| <= eps`` elementwise).

The model is run in the mode it is in (``evaluate`` puts it in eval mode); its train/eval flag and
its parameters' ``requires_grad`` are never changed, and no parameter ``.grad`` is written: input
gradients come from ``torch.autograd.grad`` with respect to the input only.

Parametrized weights (``torch.nn.utils.parametrize``, e.g. the orthogonal head's ``matrix_exp``) are computed
once per attack call, not at every step: the whole call runs inside ``parametrize.cached()``. The parameters
do not change during an attack, so the function attacked and its input gradient are unchanged; the cache is
dropped when the call returns, so a training step that calls an attack updates and recomputes them as usual.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..config import parse_number
from ..errors import AttackNotApplicable
from ..registry import get_component

LOSSES = ("ce", "cw", "dlr")
GRAD_MODE_SHORTHANDS = ("ift", "unroll", "phantom")


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
        from ..config import accepted_keys

        allowed, _ = accepted_keys(cls)
        raise TypeError(f"attack {name!r}: {err}. Accepted options: {', '.join(allowed)}") from err


def parse_eps(eps: float | int | str) -> float:
    """``eps`` as a float from a number or a fraction string such as ``"8/255"``; must be >= 0."""
    value = parse_number(eps)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return value


def eps_in_255(eps: float) -> float:
    """``eps * 255``, snapped to the nearest integer when within 1e-6 (so ``8/255`` gives 8, not 7.999)."""
    scaled = eps * 255.0
    nearest = round(scaled)
    return float(nearest) if abs(scaled - nearest) < 1e-6 else scaled


def paper_steps(eps: float) -> int:
    """The step count of Kurakin et al. used by the LyaDEQ paper: ``floor(min(e + 4, 1.25 e))`` with
    ``e = eps * 255`` (eps on the [0, 1] scale); at least 1. Gives 2, 5, 7, 10 for eps 2, 4, 6, 8 /255."""
    e = eps_in_255(eps)
    return max(1, math.floor(min(e + 4.0, 1.25 * e) + 1e-9))


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{j != y} z_j - z_y`` per sample, shape (N,); > 0 exactly when the sample is misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.amax(1) - true


def attack_loss(name: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample loss (N,) that an attack maximises.

    ``ce``: cross-entropy. ``cw``: the Carlini-Wagner margin ``max_{j!=y} z_j - z_y`` (no clamp, so it
    keeps pushing past the decision boundary). ``dlr``: Croce & Hein's difference of logits ratio
    ``-(z_y - max_{j!=y} z_j) / (z_(1) - z_(3))`` with ``z_(i)`` the sorted logits (needs >= 3 classes),
    invariant to shifting and scaling the logits.
    """
    if name == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if name == "cw":
        return margin(logits, y)
    if name == "dlr":
        if logits.shape[1] < 3:
            raise ValueError("the dlr loss needs at least 3 classes; use loss='ce' or 'cw'")
        ordered = logits.sort(dim=1, descending=True).values
        return margin(logits, y) / (ordered[:, 0] - ordered[:, 2] + 1e-12)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


def normalize_grad_mode(grad_mode: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """A backward spec dict (``{"type": "unroll"}``) from a shorthand string, a dict, or None."""
    if grad_mode is None:
        return None
    if isinstance(grad_mode, str):
        return {"type": grad_mode}
    if isinstance(grad_mode, dict) and "type" in grad_mode:
        return dict(grad_mode)
    raise ValueError(
        f"grad_mode must be None, one of {', '.join(GRAD_MODE_SHORTHANDS)} or a backward spec dict with a "
        f"'type' key, got {grad_mode!r}"
    )


def has_deq_layer(model: nn.Module) -> bool:
    """Whether ``model`` holds a :class:`lyadeq_zoo.deq.layer.DEQLayer` (whose gradient can be swapped)."""
    try:
        from ..deq.layer import DEQLayer
    except ImportError:
        return False
    return any(isinstance(m, DEQLayer) for m in model.modules())


@contextlib.contextmanager
def gradient_mode(model: nn.Module, spec: dict[str, Any] | None) -> Iterator[None]:
    """Run ``model`` with every DEQ layer's backward replaced by ``spec`` (no-op for ``None``)."""
    if spec is None:
        yield
        return
    if not has_deq_layer(model):
        raise AttackNotApplicable(
            f"grad_mode={spec!r} swaps the backward of DEQ layers, but the model has none; "
            "drop grad_mode for this model"
        )
    from ..deq.layer import override_backward

    with override_backward(model, spec):
        yield


def input_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d loss / d x summed over the batch, per-sample loss (N,), logits (N, K)), all detached.

    A model that cuts its input out of the graph (``x.detach()``, quantisation, ``no_grad``) gets a zero
    gradient here instead of an error: that is what an attacker would see.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        per_sample = attack_loss(loss, logits, y)
        if per_sample.requires_grad:
            (grad,) = torch.autograd.grad(per_sample.sum(), x, allow_unused=True)
        else:
            grad = None
    if grad is None:
        grad = torch.zeros_like(x)
    # NaN gradients (e.g. from a solver that diverged) give no direction; treat them as zero.
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    return grad.detach(), per_sample.detach(), logits.detach()


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip ``x_adv`` into the l_inf ball of radius ``eps`` around ``x`` and into ``[0, 1]``."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """``x`` plus noise uniform in ``[-eps, eps]`` per pixel, clipped to ``[0, 1]``."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    return (x + eps * noise).clamp(0.0, 1.0)


def check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"x must be a float tensor of images in [0, 1], got {type(x).__name__}")
    if y.shape != x.shape[:1]:
        raise ValueError(f"y must hold one label per image: x is {tuple(x.shape)}, y is {tuple(y.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"x must lie in [0, 1] (got [{x.min().item():.3g}, {x.max().item():.3g}]): the models take "
            "unnormalised images and normalise inside"
        )


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Predicted labels (N,) of ``model`` on ``x`` without building a graph."""
    if batch_size is None or x.shape[0] <= batch_size:
        return model(x).argmax(1)
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])


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
        loss: str = "ce",
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
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and _jsonable(v)}

    # -- driver -------------------------------------------------------------------------------------
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples ``x_adv`` (same shape as ``x``) in the eps-ball around ``x`` and [0, 1]."""
        check_inputs(x, y)
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


def _jsonable(value: Any) -> bool:
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
