"""The ``train:`` config section: :class:`TrainConfig`, its schema, and the resume compatibility check.

Defaults follow the paper's recipe (Adam, betas (0.9, 0.999), lr 1e-3, cosine annealing); the epoch
count per data set lives in ``configs/<dataset>/_base.yaml`` (MNIST 10, SVHN 40, CIFAR 50).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import ConfigError, check_value, register_section, validate_component

Scheduler = Literal["cosine", "constant"]
Augmentation = Literal["none", "crop_flip", "flip"]
Device = Literal["auto", "cpu", "cuda"]

# Keys that may change when a run is resumed: they touch bookkeeping, evaluation or the hardware, never
# the sequence of weights on a given device. Everything else (including train.epochs, which sets the
# length of the cosine schedule) must equal the checkpoint's config.
RESUME_MUTABLE_KEYS: tuple[str, ...] = (
    "meta",
    "eval",
    "data.root",
    "data.download",
    "train.checkpoint_every_steps",
    "train.keep_last",
    "train.log_every_steps",
    "train.eval_every_epochs",
    "train.eval_batch_size",
    "train.limit_test",
    "train.final_eval",
    "train.device",
    "train.data_on_device",
)


@dataclass
class TrainConfig:
    """Options of the ``train:`` section (all optional). Units: lr per step, ``eps`` in [0, 1] pixels.

    ``batch_size`` is the **global** batch (all ranks together), so a run's trajectory does not depend on
    the number of processes; it must be divisible by the world size.
    """

    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 500
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    scheduler: Scheduler = "cosine"  # cosine annealing per step down to min_lr, or constant
    min_lr: float = 0.0
    grad_clip: float | None = None  # max global gradient norm, None = off
    objective: dict[str, Any] = field(default_factory=lambda: {"type": "ce"})
    augment: Augmentation = "none"  # none | flip | crop_flip (pad 4 + random 32-crop + horizontal flip)
    seed: int = 0
    checkpoint_every_steps: int = 500  # 0 = only at the end of each epoch
    keep_last: int = 3
    log_every_steps: int = 20
    eval_every_epochs: int = 1  # clean test accuracy after every k-th epoch (0 = never)
    amp: bool = False  # bf16 autocast around the backbone only (CPU and CUDA); solver, cell, Lyapunov, head in fp32
    channels_last: bool = False  # NHWC layout of the 4-d weights and the backbone's input (CPU and CUDA)
    data_on_device: bool = True  # keep the uint8 split on the GPU when it fits
    device: Device = "auto"
    sync_bn: bool = False  # SyncBatchNorm under DDP (CUDA only; see docs/training.md before enabling)
    find_unused_parameters: bool = False  # passed to DistributedDataParallel
    limit_train: int | None = None  # first N training images (tiny runs)
    limit_test: int | None = None  # first N test images for per-epoch and final evaluation
    # Attack suite for lz.evaluate at the end: a suite name or file, a suite mapping, a list of attack specs, or None.
    final_eval: str | dict[str, Any] | list[dict[str, Any]] | None = "paper"
    # Starting weights (fine-tuning): a zoo name with pretrained weights, a save_pretrained folder or a
    # .safetensors file, loaded strictly before the first step. A resumed run takes its checkpoint's.
    init_from: str | None = None

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def option_types(cls) -> dict[str, Any]:
        """``{option: annotation}`` in field order: the schema that ``train:`` values are checked against."""
        hints = typing.get_type_hints(cls, include_extras=True)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, section: Mapping[str, Any] | None) -> TrainConfig:
        """Build from the ``train`` section of a resolved config; bad values raise ConfigError."""
        section = dict(section or {})
        unknown = sorted(set(section) - set(cls.keys()))
        if unknown:
            raise ConfigError(f"train.{unknown[0]} is not a train option. Allowed keys: {', '.join(cls.keys())}.")
        cfg = cls(**section)
        cfg._check()
        return cfg

    def _check(self) -> None:
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from.strip()):
            raise ConfigError(
                "train.init_from must be a zoo name with pretrained weights, a save_pretrained folder or a "
                f".safetensors file, or null; got {self.init_from!r}"
            )
        for name, annotation in self.option_types().items():
            check_value(getattr(self, name), annotation, f"train.{name}")
        for name in ("epochs", "batch_size", "eval_batch_size", "keep_last", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("checkpoint_every_steps", "eval_every_epochs", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be a non-negative integer, got {getattr(self, name)!r}")
        for name in ("limit_train", "limit_test"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be a positive integer or null, got {getattr(self, name)!r}")
        for name in ("lr", "weight_decay", "min_lr"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be a non-negative number, got {getattr(self, name)!r}")
            setattr(self, name, float(getattr(self, name)))
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip must be a positive number or null, got {self.grad_clip!r}")
        validate_component("objective", self.objective, ("train", "objective"))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out


register_section("train", TrainConfig.option_types)


# -- resume compatibility -------------------------------------------------------------------------------
def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: list(tree) if isinstance(tree, tuple) else tree}


def _mutable(key: str, mutable: Iterable[str]) -> bool:
    return any(key == m or key.startswith(m + ".") for m in mutable)


def config_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], mutable: Iterable[str] = RESUME_MUTABLE_KEYS
) -> list[tuple[str, Any, Any]]:
    """``(dotted key, checkpoint value, current value)`` for each key that differs and may not change.

    The ``train`` sections are compared after filling in defaults, so writing a default explicitly is
    not a difference. A missing key shows as ``<absent>``.
    """
    saved, current = dict(saved), dict(current)
    for cfg in (saved, current):
        cfg["train"] = TrainConfig.from_dict(cfg.get("train")).to_dict()
    a, b = _flatten(saved), _flatten(current)
    absent = "<absent>"
    diffs = []
    for key in sorted(set(a) | set(b)):
        if _mutable(key, mutable):
            continue
        va, vb = a.get(key, absent), b.get(key, absent)
        if va != vb:
            diffs.append((key, va, vb))
    return diffs
