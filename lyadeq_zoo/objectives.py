"""Training objectives (registry kind ``objective``): ``ce``, ``trades``, ``pgd_at``.

An objective is built from its config spec (``train.objective: {type: trades, beta: 6.0}``) and called
as ``objective(model, x, y) -> (loss, logits)`` with images ``x`` ``(N, C, H, W)`` in [0, 1] and labels
``y`` ``(N,)`` int64. ``loss`` is a scalar to minimise and ``logits`` ``(N, classes)`` are those the
loss was computed on for the training accuracy (clean logits for ``ce`` and ``trades``, adversarial
logits for ``pgd_at``). Each works with any model that maps [0, 1] images to logits.

Adversarial examples inside the objectives
------------------------------------------
The inner maximisation runs with the model in **eval mode** by default (``attack_mode="eval"``), as
the TRADES reference code does: BatchNorm then uses its running statistics, and the many attack
forward passes (each of which, in a DEQ, runs BN once per solver iteration) do not pollute the running
statistics. ``attack_mode="train"`` keeps the training mode instead (as some PGD-AT code does). Either
way every module's own ``training`` flag is restored afterwards. Gradients are taken with respect to the
input only (``torch.autograd.grad``), so parameter ``.grad`` fields are never touched by the attack;
under DistributedDataParallel the attack runs on the wrapped ``module`` so no gradient sync happens.
A DEQ model gives the attack a real input gradient in eval mode too (see docs/ARCHITECTURE.md).

The inner maximisation is the attacks' own loop (:func:`lyadeq_zoo.attacks.sign_gradient.sign_gradient_ascent`,
projected by :func:`lyadeq_zoo.attacks.threat_model.project`); only the loss and the start are the objective's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .attacks.sign_gradient import sign_gradient_ascent
from .attacks.threat_model import project
from .registry import register

ATTACK_MODES = ("eval", "train")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (else ``model`` itself)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


@contextlib.contextmanager
def module_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put every submodule of ``model`` in train/eval mode, then restore each one's own flag."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, flag in saved:
            module.training = flag


def _check_common(eps: float, step_size: float, steps: int, attack_mode: str) -> None:
    if eps < 0 or step_size < 0:
        raise ValueError(f"eps and step_size must be >= 0 (inputs in [0, 1]), got {eps} and {step_size}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if attack_mode not in ATTACK_MODES:
        raise ValueError(f"attack_mode must be one of {ATTACK_MODES}, got {attack_mode!r}")


def _gradient_of(
    net: nn.Module, loss_of_logits: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> d loss_of_logits(net(x)) / dx`` (detached, shape of ``x``), for :func:`sign_gradient_ascent`.

    Not ``attacks.gradients.input_gradient``: that one sums a per-sample loss and zeroes NaN gradients,
    while the objectives maximise the batch-mean CE (PGD-AT) or the summed KL (TRADES) exactly as the
    shipped adversarially trained models were trained; a different reduction can flip the sign of
    near-zero gradient entries and so change the adversarial examples.
    """

    def gradient_at(x_now: torch.Tensor) -> torch.Tensor:
        x_now = x_now.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of_logits(net(x_now).float()), x_now)
        return grad

    return gradient_at


@register("objective", "ce")
class CrossEntropy:
    """Plain cross-entropy on clean inputs (mean over the batch; ``label_smoothing`` in [0, 1))."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing), logits

    def __repr__(self) -> str:
        return f"CrossEntropy(label_smoothing={self.label_smoothing})"


@register("objective", "trades")
class TRADES:
    """TRADES (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(p(x) || p(x'))``, mean over the batch.

    ``x'`` maximises ``KL(p(x) || p(x'))`` inside the l_inf ball of radius ``eps`` by ``steps`` signed
    gradient steps of ``step_size`` from ``x + init_std * N(0, 1)`` (projected, clipped to [0, 1]).
    Paper settings: eps 0.031, step 0.007, 10 steps, beta 6.0 (the defaults). Units: [0, 1] pixels.
    Returns the clean logits.
    """

    def __init__(
        self,
        eps: float = 0.031,
        step_size: float = 0.007,
        steps: int = 10,
        beta: float = 6.0,
        init_std: float = 0.001,
        attack_mode: Literal["eval", "train"] = "eval",
    ) -> None:
        _check_common(eps, step_size, steps, attack_mode)
        if beta < 0 or init_std < 0:
            raise ValueError(f"beta and init_std must be >= 0, got {beta} and {init_std}")
        self.eps, self.step_size, self.steps = float(eps), float(step_size), int(steps)
        self.beta, self.init_std, self.attack_mode = float(beta), float(init_std), attack_mode

    def perturb(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The adversarial example ``x'`` for inputs ``x`` (detached, in the eps-ball and in [0, 1])."""
        net, x = unwrap(model), x.detach()
        with module_mode(net, self.attack_mode == "train"), torch.enable_grad():
            with torch.no_grad():
                target = F.softmax(net(x).float(), dim=1)
            kl_gradient = _gradient_of(
                net, lambda logits: F.kl_div(F.log_softmax(logits, dim=1), target, reduction="sum")
            )
            # TRADES' own start: a small Gaussian around x (not uniform in the eps-ball).
            start = project(x + self.init_std * torch.randn_like(x), x, self.eps)
            return sign_gradient_ascent(kl_gradient, x, start, self.eps, self.step_size, self.steps)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = self.perturb(model, x)
        logits = model(x)
        logits_adv = model(x_adv)
        natural = F.cross_entropy(logits.float(), y)
        robust = F.kl_div(
            F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits.float(), dim=1), reduction="batchmean"
        )
        return natural + self.beta * robust, logits

    def __repr__(self) -> str:
        return (
            f"TRADES(eps={self.eps}, step_size={self.step_size}, steps={self.steps}, beta={self.beta}, "
            f"attack_mode={self.attack_mode!r})"
        )


@register("objective", "pgd_at")
class PGDAT:
    """PGD adversarial training (Madry et al. 2018): ``CE(f(x'), y)`` on the PGD example ``x'``.

    ``x'`` maximises the cross-entropy in the l_inf ball of radius ``eps`` by ``steps`` signed gradient
    steps of ``step_size``, from a uniform random start in [-eps, eps] when ``random_start``. Paper
    settings ("PAT"): eps 0.031, step 0.00784 (2/255), 7 steps (the defaults). Returns the adversarial
    logits.
    """

    def __init__(
        self,
        eps: float = 0.031,
        step_size: float = 0.00784,
        steps: int = 7,
        random_start: bool = True,
        attack_mode: Literal["eval", "train"] = "eval",
    ) -> None:
        _check_common(eps, step_size, steps, attack_mode)
        self.eps, self.step_size, self.steps = float(eps), float(step_size), int(steps)
        self.random_start, self.attack_mode = bool(random_start), attack_mode

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The PGD example for ``(x, y)`` (detached, in the eps-ball and in [0, 1])."""
        net, x = unwrap(model), x.detach()
        start = x.clone()
        if self.random_start:
            # Noise uniform in [-eps, eps] from the global RNG (seeded per rank by the training loop), drawn in
            # x's memory layout. Not threat_model.uniform_start: that draws in logical (contiguous) order, which
            # gives other numbers for a channels_last batch (train.channels_last).
            start = project(x + torch.empty_like(x).uniform_(-self.eps, self.eps), x, self.eps)
        ce_gradient = _gradient_of(net, lambda logits: F.cross_entropy(logits, y))
        with module_mode(net, self.attack_mode == "train"), torch.enable_grad():
            return sign_gradient_ascent(ce_gradient, x, start, self.eps, self.step_size, self.steps)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits_adv = model(self.perturb(model, x, y))
        return F.cross_entropy(logits_adv.float(), y), logits_adv

    def __repr__(self) -> str:
        return (
            f"PGDAT(eps={self.eps}, step_size={self.step_size}, steps={self.steps}, "
            f"random_start={self.random_start}, attack_mode={self.attack_mode!r})"
        )
