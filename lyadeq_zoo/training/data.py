"""The data of a training run: whole splits as tensors, where they live, batches by index, augmentation.

A split is held whole in memory (``uint8`` images stay ``uint8`` until a batch is taken), so any batch can be
produced from its indices alone: that, and an augmentation seeded by ``(seed, epoch, step)``, is what makes a
resumed run take exactly the batches an uninterrupted one would.

Each split also gets a :func:`fingerprint` at load: its data set name, split, image count and the sha256 of its
content (the image and label tensors as loaded, shape and dtype included; not the path it came from). A run
records it in every checkpoint and in ``OUT/data.json``, and ``--resume`` refuses other data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import ConfigError, accepted_keys
from ..registry import build_component, get_component
from .distributed import DistContext

# The fingerprint fields that must agree for a run to resume (``root`` and ``shape`` are informative only).
FINGERPRINT_FIELDS: tuple[str, ...] = ("dataset", "split", "count", "sha256")


@dataclass(frozen=True)
class RunData:
    """Both splits of a run, already placed (see :func:`place`), the data set's registered name, and the
    :func:`fingerprint` of each split (``{"train": ..., "test": ...}``, taken before placing)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    dataset: str
    fingerprints: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def load_split(
    config: Mapping[str, Any], split: str, root: str | Path | None, limit: int | None
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The whole ``split`` of ``config["data"]``: images ``uint8`` or ``float32 (N, C, H, W)``, labels
    ``int64 (N,)`` (CPU), and the data set's name. ``root`` (``--data-dir``) replaces ``data.root``."""
    spec = dict(config.get("data") or {})
    if "type" not in spec:
        raise ConfigError("the config has no data section naming a data set (data: {type: mnist})")
    component = get_component("dataset", spec["type"])
    allowed, var_kw = accepted_keys(component)
    spec["split"] = split
    if root is not None:
        spec["root"] = str(root)
    if "limit" in allowed or var_kw:
        spec["limit"] = limit
    dataset = build_component("dataset", spec)
    images = getattr(dataset, "images", None)
    labels = getattr(dataset, "labels", None)
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and isinstance(labels, torch.Tensor):
        images, labels = images[:limit], labels[:limit].to(torch.int64)
    else:  # any Dataset of (image, label) items
        n = len(dataset) if limit is None else min(limit, len(dataset))
        items = [dataset[i] for i in range(n)]
        images = torch.stack([torch.as_tensor(x, dtype=torch.float32) for x, _ in items])
        labels = torch.tensor([int(y) for _, y in items], dtype=torch.int64)
    return images, labels, str(spec["type"])


def fingerprint(
    images: torch.Tensor, labels: torch.Tensor, dataset: str, split: str, root: str | Path | None
) -> dict[str, Any]:
    """What identifies a loaded split: ``{"dataset", "split", "count", "shape", "sha256", "root"}``.

    ``sha256`` covers the images' and labels' dtype, shape and bytes (``images (N, C, H, W)``, ``labels (N,)``,
    as :func:`load_split` returns them), so the same data under another path has the same fingerprint. ``root``
    records where it was read from (informative only). About 0.3 s per 100 MB of images.
    """
    digest = hashlib.sha256()
    for tensor in (images, labels):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    return {
        "dataset": str(dataset), "split": str(split), "count": int(images.shape[0]),
        "shape": list(images.shape[1:]), "sha256": digest.hexdigest(), "root": None if root is None else str(root),
    }


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, saved value, current value)`` for each of :data:`FINGERPRINT_FIELDS` that differs."""
    return [(key, saved.get(key), current.get(key)) for key in FINGERPRINT_FIELDS if saved.get(key) != current.get(key)]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """``float32`` images in [0, 1]: ``uint8`` is divided by 255 (as ``ImageDataset.__getitem__`` does)."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def place(
    images: torch.Tensor, labels: torch.Tensor, ctx: DistContext, on_device: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """On CUDA: the split on the GPU when ``on_device`` and it takes under 30% of the free memory, else in
    pinned host memory (for asynchronous copies). On CPU: unchanged."""
    if ctx.device.type != "cuda":
        return images, labels
    if on_device:
        free, _ = torch.cuda.mem_get_info(ctx.device)
        if images.numel() * images.element_size() < 0.3 * free:
            return images.to(ctx.device), labels.to(ctx.device)
    return images.pin_memory(), labels.pin_memory()


def batch_at(
    images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``indices`` of a placed split on ``device``: float images ``(n, C, H, W)`` in [0, 1], labels ``(n,)``."""
    x = to_float(images[indices.to(images.device)].to(device, non_blocking=True))
    y = labels[indices.to(labels.device)].to(device, non_blocking=True)
    return x, y


def step_seed(seed: int, epoch: int, step: int) -> int:
    """Seed of the augmentation of global batch ``step`` of ``epoch`` (a fixed function)."""
    return ((seed * 1_000_003 + epoch) * 100_003 + step + 7) % (2**63 - 1)


def augment_batch(x: torch.Tensor, mode: str, seed: int, global_size: int, offset: int) -> torch.Tensor:
    """Random crop (zero padding 4) and/or horizontal flip of ``x`` ``(n, C, H, W)``.

    The random draws cover the whole global batch (``global_size`` images) from a generator seeded with
    ``seed``; this rank's images are rows ``offset .. offset + n`` of it, so the result does not depend
    on the number of processes.
    """
    if mode == "none":
        return x
    n, _, h, w = x.shape
    gen = torch.Generator().manual_seed(seed)
    flips = (torch.rand(global_size, generator=gen) < 0.5)[offset : offset + n]
    if mode == "crop_flip":
        pad = 4
        shifts = torch.randint(0, 2 * pad + 1, (global_size, 2), generator=gen)[offset : offset + n].to(x.device)
        padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (n, H+8, W+8, C)
        rows = shifts[:, :1] + torch.arange(h, device=x.device)  # (n, H)
        cols = shifts[:, 1:] + torch.arange(w, device=x.device)  # (n, W)
        batch = torch.arange(n, device=x.device).view(n, 1, 1)
        x = padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
    return torch.where(flips.to(x.device).view(n, 1, 1, 1), x.flip(3), x)
