"""Model architectures (kind ``model``): the paper's pipeline as one configurable class.

``images in [0, 1] -> normalise -> backbone -> DEQ layer (z* = f(z*, x)) -> [Lyapunov projection] -> head``

Zoo entries (``lyadeq_mnist`` ...) are configs naming ``model.type: deq_classifier``; see configs/.

The class keeps timm's model contract (``pretrained_cfg``, ``num_features``, ``forward_features``,
``forward_head``, ``reset_classifier`` ...) and huggingface_hub's (``save_pretrained``, ``push_to_hub``,
``from_pretrained``, from :class:`lyadeq_zoo.hub_mixin.HubMixin`); see :class:`DEQClassifier`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from .channels import adapt_channel_values, adapt_channel_weight, check_channel_count
from .deq.layer import DEQLayer
from .errors import ConfigError, InputError
from .heads import LinearHead, OrthogonalHead
from .hub_mixin import HubMixin
from .inputs import check_images
from .registry import build_component, register

HEAD_INPUTS = ("corrected", "projected", "state")
ARCHITECTURE = "deq_classifier"
# How timm's data pipeline must prepare images for these models (timm.data.resolve_model_data_config reads it):
# resize to exactly img_size, no crop, and NO normalisation (mean 0, std 1): the model normalises inside.
DATA_CFG = {"fixed_input_size": True, "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}


def _hw(img_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    h, w = img_size
    return int(h), int(w)


def _per_channel(values: float | Sequence[float] | None, in_chans: int, default: float, name: str) -> torch.Tensor:
    if values is None:
        values = [default] * in_chans
    elif isinstance(values, (int, float)):
        values = [float(values)] * in_chans
    values = [float(v) for v in values]
    if len(values) != in_chans:
        raise ValueError(f"{name} must have one value per input channel ({in_chans}), got {values}")
    return torch.tensor(values).view(1, in_chans, 1, 1)


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ConfigError(
            f"model.num_classes must be an int >= 0 (0: no classifier, forward returns the (N, width) "
            f"features), got {num_classes!r}"
        )
    return int(num_classes)


def classifier_attribute(head: nn.Module) -> str | None:
    """The name, inside ``head``, of its final classifier module; None when the whole head is the classifier.

    ``linear`` head: ``fc`` (that head is its classifier). ``orthogonal`` head: ``classifier``, the linear
    layer after the orthogonal ``Z``. ``Z`` is not part of the classifier: it is the last layer of the
    pre-logits (an isometry of the stabilised state trained with the model), so resetting the classifier
    keeps it. Any other head (a plugin's): the whole head.
    """
    if isinstance(head, OrthogonalHead):
        return "classifier"
    if isinstance(head, LinearHead):
        return "fc"
    return None


def head_pre_logits(head: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """What ``head`` feeds its classifier, ``(N, in_features)``: ``Z·z + b`` for an orthogonal head, else ``z``."""
    if isinstance(head, OrthogonalHead):
        return head.orth(z)
    return z


@register("model", "deq_classifier")
class DEQClassifier(nn.Module):
    """DEQ image classifier with an optional Lyapunov stability module (the paper's LyaDEQ when set).

    Args (the config keys of ``model:``):
        num_classes, in_chans, img_size: data geometry; inputs must be ``(N, in_chans, H, W)``.
        width: the DEQ state size (backbone output, cell width, Lyapunov width, head input).
        mean, std: per-channel input normalisation applied inside the model (inputs are in [0, 1]).
        backbone, cell, solver, backward, lyapunov, head: component specs (``type:`` + options).
            ``lyapunov: null`` gives a plain DEQ.
        head_input: which tensor feeds the head, with ``F(z) = f(z, x) - z`` at the equilibrium z* and F̂ its
            Lyapunov projection: ``corrected`` = ``z* + F̂(z*)`` (the state after one step of the stabilised
            dynamics), ``projected`` = ``F̂(z*)`` alone, ``state`` = ``z*`` (required for plain DEQs).
            ``corrected`` is the default: after one MNIST epoch it reached 93.8 % test accuracy on average over
            3 seeds and both LyaDEQ variants, against 86.4 % for ``projected`` (tools/compare_head_input.py).

    ``forward(x)`` returns logits ``(N, num_classes)`` and keeps per-sample, detached diagnostics of that call
    in ``self.last_info``: ``nstep``, ``rel_residual`` and, with a Lyapunov module, ``lyapunov_value`` V(z*) and
    ``lyapunov_decrease`` ∇V(z*)ᵀF̂(z*) + c·V(z*).
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        img_size: int | Sequence[int],
        width: int,
        backbone: dict[str, Any],
        cell: dict[str, Any],
        solver: dict[str, Any],
        backward: dict[str, Any],
        head: dict[str, Any],
        lyapunov: dict[str, Any] | None = None,
        head_input: Literal["corrected", "projected", "state"] = "corrected",
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
    ):
        super().__init__()
        if head_input not in HEAD_INPUTS:
            raise ValueError(f"head_input must be one of {', '.join(HEAD_INPUTS)}, got {head_input!r}")
        if lyapunov is None and head_input != "state":
            raise ValueError(
                f"head_input {head_input!r} needs a Lyapunov module; set a lyapunov spec or head_input: state"
            )
        self.num_classes, self.in_chans, self.width = int(num_classes), int(in_chans), int(width)
        self.img_size = _hw(img_size)
        self.head_input = head_input
        self.register_buffer("mean", _per_channel(mean, in_chans, 0.0, "mean"), persistent=False)
        self.register_buffer("std", _per_channel(std, in_chans, 1.0, "std"), persistent=False)
        if bool((self.std <= 0).any()):
            raise ValueError(f"std must be positive, got {std}")
        self.backbone = build_component(
            "backbone", backbone, in_chans=in_chans, img_size=img_size, out_features=self.width
        )
        self.deq = DEQLayer(build_component("cell", cell, width=self.width), solver=solver, backward=backward)
        self.lyapunov = None if lyapunov is None else build_component("lyapunov", lyapunov, width=self.width)
        self.head = build_component("head", head, in_features=self.width, num_classes=self.num_classes)
        self.last_info: dict[str, torch.Tensor] = {}

    @property
    def cell(self) -> nn.Module:
        return self.deq.cell

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming the expected and the given shape unless ``x`` is ``(N, C, H, W)``."""
        expected = (self.in_chans, *self.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"expected (N, C, H, W) = (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}; "
                "pass a batch of images in [0, 1] (add a batch dimension with x.unsqueeze(0))"
            )

    def equilibrium(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``(z*, injected features u, solver info)`` for images ``x`` ``(N, C, H, W)`` in [0, 1]."""
        self.check_input(x)
        u = self.backbone((x - self.mean) / self.std)
        z_star, info = self.deq(u)
        if self.training and hasattr(self.cell, "update_running_stats"):
            # The cell's BatchNorm never updates running statistics during the solve; do it once, at z*.
            self.cell.update_running_stats(z_star.detach(), u.detach())
        return z_star, u, info

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input ``(N, width)`` (see ``head_input``); also refreshes ``last_info``."""
        z_star, u, info = self.equilibrium(x)
        last = {k: info[k].detach() for k in ("nstep", "rel_residual") if k in info}
        feats = z_star
        if self.lyapunov is not None:
            dynamics = self.cell(z_star, u) - z_star
            f_hat, ly_info = self.lyapunov.project(z_star, dynamics)
            last.update({k: v.detach() for k, v in ly_info.items()})
            if self.head_input == "corrected":
                feats = z_star + f_hat
            elif self.head_input == "projected":
                feats = f_hat
        self.last_info = last
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for images ``x`` ``(N, in_chans, H, W)`` with values in [0, 1]."""
        x = check_images(x, in_chans=self.in_chans, img_size=self.img_size, dtype=self.mean.dtype)
        if x.shape[0] == 0:  # nothing to solve for: (0, num_classes) logits from the head alone
            return self.head(x.new_zeros((0, self.width)))
        return self.head(self.features(x))
