"""Classifier heads (kind ``head``): features ``(N, in_features)`` -> logits ``(N, num_classes)``.

``in_features`` and ``num_classes`` are supplied by the enclosing model.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrizations

from .registry import register

SUPPLIED = ("in_features", "num_classes")


@register("head", "linear")
class LinearHead(nn.Module):
    """A single linear classifier ``(N, in_features) -> (N, num_classes)``."""

    __lyadeq_zoo_supplied__ = SUPPLIED

    def __init__(self, in_features: int, num_classes: int, bias: bool = True):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes, bias=bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z)


@register("head", "orthogonal")
class OrthogonalHead(nn.Module):
    """The paper's "orthogonal FC layer, then the classifier".

    Structure: ``logits = classifier(Z·u + b)`` with ``Z`` an ``(in_features, in_features)`` matrix kept
    exactly orthogonal (``ZᵀZ = I``) by ``torch.nn.utils.parametrizations.orthogonal`` (the weight is a
    function of an unconstrained parameter, so plain Adam keeps the constraint), followed by an ordinary
    linear layer ``in_features -> num_classes``.

    Why square: ``ZᵀZ = I`` then makes the layer an isometry of the state space, so it neither collapses nor
    inflates the distance between the stabilised states of different classes (the paper's motivation);
    a non-square ``Z`` with orthonormal columns would need ``out >= in``. The separate classifier keeps
    the logit scale free, which an orthonormal ``(num_classes, in_features)`` classifier would fix to 1.

    ``orthogonal_map``: ``"matrix_exp"``, ``"cayley"`` or ``"householder"`` (torch's choice when None).

    ``Z`` is recomputed from its parameter at every forward pass (a fixed cost whatever the batch). Attacks and
    ``lz.evaluate`` compute it once per call by running inside ``torch.nn.utils.parametrize.cached()``; wrap your
    own repeated inference in that context for the same saving (never around an optimiser step).
    """

    __lyadeq_zoo_supplied__ = SUPPLIED

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        bias: bool = True,
        orthogonal_map: Literal["matrix_exp", "cayley", "householder"] | None = None,
    ):
        super().__init__()
        if orthogonal_map not in (None, "matrix_exp", "cayley", "householder"):
            raise ValueError(
                f"orthogonal_map must be matrix_exp, cayley, householder or null, got {orthogonal_map!r}"
            )
        self.orth = parametrizations.orthogonal(
            nn.Linear(in_features, in_features, bias=bias), orthogonal_map=orthogonal_map
        )
        self.classifier = nn.Linear(in_features, num_classes)

    @property
    def orthogonal_weight(self) -> torch.Tensor:
        """The constrained matrix ``Z`` ``(in_features, in_features)``, with ``ZᵀZ = I``."""
        return self.orth.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.orth(z))
