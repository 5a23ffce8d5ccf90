"""Adapting per-channel things to another number of input channels: a first layer's weights and the
per-channel normalisation values (pretrained weights used on grey images, or grey weights on RGB).

One rule for both, for ``C_old`` trained channels and ``C_new`` wanted ones (timm's ``adapt_input_conv``
idea, extended to any channel count in either direction):

* ``C_new == C_old``: unchanged.
* ``C_new == 1``: the weights are **summed** over the old channels and mean/std **averaged**. A grey image
  then gets the pre-activation that the old layer gave the image with that grey value in every channel, up
  to the channels' slightly different normalisations (CIFAR-10's means differ by < 0.03).
* otherwise: new channel ``c`` reuses old channel ``c % C_old``, the weights **repeated and scaled** by
  ``C_old / C_new`` and mean/std repeated. This is exact when ``C_new`` is a multiple of ``C_old`` and every
  group of ``C_old`` channels holds the same image (1 -> 3: a grey digit fed as RGB gives the old output
  exactly); otherwise it is a starting point for fine-tuning, not a trained model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import ConfigError


def check_channel_count(in_chans: object, *, what: str = "model.in_chans") -> int:
    """``in_chans`` as an int if it is a positive integer (not a bool); else ConfigError naming the value."""
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ConfigError(f"{what} must be a positive int (the number of image channels), got {in_chans!r}")
    return int(in_chans)


def adapt_channel_weight(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first layer's weight ``(out, C_old, ...)`` adapted to ``in_chans`` input channels (module docstring).

    Returns a new tensor ``(out, in_chans, ...)`` of the same dtype and device (computed in at least float32).
    """
    in_chans = check_channel_count(in_chans)
    if weight.dim() < 2:
        raise ValueError(f"expected a weight (out, channels, ...), got shape {tuple(weight.shape)}")
    old = weight.shape[1]
    if in_chans == old:
        return weight.detach().clone()
    work = weight.detach().to(torch.promote_types(weight.dtype, torch.float32))
    if in_chans == 1:
        adapted = work.sum(dim=1, keepdim=True)
    else:
        index = torch.arange(in_chans, device=weight.device) % old
        adapted = work.index_select(1, index) * (old / in_chans)
    return adapted.to(weight.dtype)


def adapt_channel_values(values: Sequence[float], in_chans: int) -> list[float]:
    """Per-channel values (a mean or std list of ``C_old`` floats) for ``in_chans`` channels (module docstring)."""
    in_chans = check_channel_count(in_chans)
    values = [float(v) for v in values]
    if not values:
        raise ValueError("expected at least one per-channel value, got none")
    if in_chans == len(values):
        return values
    if in_chans == 1:
        return [sum(values) / len(values)]
    return [values[c % len(values)] for c in range(in_chans)]
