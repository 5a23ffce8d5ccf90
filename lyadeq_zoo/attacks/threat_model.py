"""The l_inf threat model: the radius ``eps``, the paper's step schedule, and the projection onto the eps-ball.

Images are float tensors ``(N, C, H, W)`` in ``[0, 1]``; ``eps`` is on that scale (``8/255`` is 8 grey levels).
An admissible adversarial example ``x_adv`` lies in ``[0, 1]`` and within ``|x_adv - x| <= eps`` elementwise.
:func:`project` is the one projection used by the attacks and by the adversarial training objectives.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import parse_number
from ..inputs import check_batch


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


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip ``x_adv`` into the l_inf ball of radius ``eps`` around ``x`` and into ``[0, 1]`` (same shape)."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """``x`` plus noise uniform in ``[-eps, eps]`` per pixel, clipped to ``[0, 1]``.

    The noise is ``eps * (2u - 1)`` with ``u = torch.rand`` from ``generator`` (the global RNG when None).
    """
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    return (x + eps * noise).clamp(0.0, 1.0)


def check_inputs(x: torch.Tensor, y: torch.Tensor, model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` checked for an attack: ``x`` float images ``(N, C, H, W)`` in [0, 1], ``y`` ``N`` integer labels.

    With ``model``, also its declared C, H, W and ``num_classes`` (see :func:`lyadeq_zoo.inputs.check_batch`; for
    a model that declares no C, H, W any ``(N, ...)`` batch is accepted). ``x`` is returned as given (its dtype
    too: the model casts it), ``y`` as int64. Raises :class:`~lyadeq_zoo.errors.InputTypeError` /
    :class:`~lyadeq_zoo.errors.InputError` (see :mod:`lyadeq_zoo.inputs`).
    """
    return check_batch(x, y, model, images="attack input x", labels="attack labels y")
