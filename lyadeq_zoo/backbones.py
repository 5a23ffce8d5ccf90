"""Feature extractors (kind ``backbone``): normalised images ``(N, C, H, W)`` -> features ``(N, out_features)``.

The paper reduces the image to a small vector before the DEQ layer: one linear layer on MNIST, a CIFAR-style
ResNet20 on SVHN / CIFAR. ``timm`` wraps any timm model for users who want a different extractor.
``in_chans``, ``img_size`` and ``out_features`` are supplied by the enclosing model, not by configs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import register

SUPPLIED = ("in_chans", "img_size", "out_features")


def _hw(img_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    h, w = img_size
    return int(h), int(w)


@register("backbone", "fc")
class FCBackbone(nn.Module):
    """One fully connected layer on the flattened image (the paper's MNIST extractor, 784 -> 64).

    Input ``(N, in_chans, H, W)``; output ``(N, out_features)``. No activation: the DEQ cell applies
    ``ReLU(x + y)`` to the injected features itself.
    """

    __lyadeq_zoo_supplied__ = SUPPLIED

    def __init__(self, in_chans: int, img_size: int | Sequence[int], out_features: int, bias: bool = True):
        super().__init__()
        h, w = _hw(img_size)
        self.proj = nn.Linear(in_chans * h * w, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))


class _BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU-3x3 conv-BN plus shortcut (1x1 conv + BN when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


@register("backbone", "resnet20")
class ResNet20Backbone(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, sec. 4.2): 3x3 stem, 3 stages of basic blocks, global pool.

    The default ``widths=(16, 32, 64)`` and ``blocks=3`` give ResNet20 (6·3 + 2 layers counting the stem and
    the projection). Stages 2 and 3 halve the resolution. The pooled 64-d vector is then mapped by a linear
    projection to ``out_features`` (64 in the paper, 128 on CIFAR-100). Input ``(N, in_chans, H, W)``,
    any H, W >= 4; output ``(N, out_features)``.
    """

    __lyadeq_zoo_supplied__ = SUPPLIED

    def __init__(
        self,
        in_chans: int,
        img_size: int | Sequence[int],
        out_features: int,
        widths: Sequence[int] = (16, 32, 64),
        blocks: int = 3,
    ):
        super().__init__()
        if blocks < 1 or not widths:
            raise ValueError(f"resnet20 needs blocks >= 1 and at least one width, got {blocks=}, {widths=}")
        widths = [int(w) for w in widths]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        in_ch = widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(_BasicBlock(in_ch, width, stride))
                in_ch = width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Linear(in_ch, out_features)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.proj(self.pool(x).flatten(1))


@register("backbone", "timm")
class TimmBackbone(nn.Module):
    """Any timm model as a feature extractor (``num_classes=0``), then a linear projection to ``out_features``.

    ``model_name`` is a timm name (``timm.list_models()``); ``pretrained`` downloads timm's weights (off by
    default: the zoo must build offline). ``img_size`` is passed to models that take it (ViTs); others
    ignore it. Input ``(N, in_chans, H, W)``; output ``(N, out_features)``.
    """

    __lyadeq_zoo_supplied__ = SUPPLIED

    def __init__(
        self,
        in_chans: int,
        img_size: int | Sequence[int],
        out_features: int,
        model_name: str = "resnet18",
        pretrained: bool = False,
    ):
        super().__init__()
        import timm

        if not timm.is_model(model_name):
            close = timm.list_models(f"*{model_name}*")[:10]
            raise ValueError(
                f"timm has no model {model_name!r}; similar names: {close or 'none'} (see timm.list_models())"
            )
        common = {"pretrained": pretrained, "num_classes": 0, "in_chans": in_chans}
        try:
            self.body = timm.create_model(model_name, img_size=_hw(img_size), **common)
        except TypeError:  # the architecture has no img_size argument (e.g. CNNs): it adapts by pooling
            self.body = timm.create_model(model_name, **common)
        self.proj = nn.Linear(self.body.num_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(x))
