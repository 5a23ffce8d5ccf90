"""The model side of a run: the model (seeded, ``train.init_from``), its optimizer and schedule, DDP, autocast."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ..deq.cells import FixedPointBatchNorm
from ..factory import build_model
from ..hub import WEIGHTS_NAME, has_pretrained, load_pretrained_weights, load_weights, read_index
from .config import TrainConfig
from .distributed import DistContext
from .rng import seed_all


def build_run_model(config: Mapping[str, Any], cfg: TrainConfig, ctx: DistContext, init_from: str | None) -> nn.Module:
    """The model of ``config``, initialised from ``train.seed`` (identically on every rank), then loaded from
    ``init_from`` if given, on this rank's device (channels_last on CUDA when ``train.channels_last``)."""
    seed_all(cfg.seed)
    model = build_model(config)
    if init_from is not None:
        load_initial_weights(model, init_from)
    model = model.to(ctx.device)
    if cfg.channels_last and ctx.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def load_initial_weights(model: nn.Module, source: str) -> nn.Module:
    """Load ``train.init_from`` into ``model`` strictly: a zoo name with pretrained weights, a folder
    holding ``model.safetensors`` (a save_pretrained or ``OUT/final`` folder) or a ``.safetensors`` file."""
    path = Path(source).expanduser()
    if path.is_dir():
        return load_weights(model, path / WEIGHTS_NAME, source=f"train.init_from {source!r}")
    if path.is_file():
        return load_weights(model, path, source=f"train.init_from {source!r}")
    if has_pretrained(source):
        return load_pretrained_weights(model, source)
    raise ConfigError(
        f"train.init_from {source!r} is neither a file, a folder, nor a zoo name with pretrained weights "
        f"(with weights: {', '.join(sorted(read_index())) or 'none'})"
    )


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam over the trainable parameters, and a per-step schedule: cosine to ``train.min_lr`` over
    ``total_steps``, or constant."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=cfg.min_lr)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return optimizer, scheduler


def sync_batchnorms(model: nn.Module) -> list[str]:
    """Replace, in place, every BatchNorm of ``model`` by ``nn.SyncBatchNorm`` (same parameters and buffers)
    except the DEQ cells' :class:`~lyadeq_zoo.deq.cells.FixedPointBatchNorm`; returns the names of those left.

    A cell's BatchNorm runs at every solver iteration and records its running statistics once per forward
    (``update_running_stats``); a plain SyncBatchNorm in its place would update them at every iteration, and
    its all-reduce per call needs every rank to stop its solver at the same iteration. So it stays per process.
    """
    kept: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FixedPointBatchNorm):
                kept.append(f"{parent_name}.{name}" if parent_name else name)
            elif isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return kept


def distribute(model: nn.Module, cfg: TrainConfig, ctx: DistContext) -> tuple[nn.Module, nn.Module]:
    """``(model, net)``: under torchrun ``net`` is the DistributedDataParallel wrapper and ``model`` the module
    inside it; in one process both are ``model``. ``train.sync_bn`` (CUDA only: torch's SyncBatchNorm has no
    CPU implementation) synchronises every BatchNorm but the DEQ cells' (see :func:`sync_batchnorms`)."""
    if not ctx.distributed:
        return model, model
    use_cuda = ctx.device.type == "cuda"
    if cfg.sync_bn:
        if not use_cuda:
            raise ConfigError(
                "train.sync_bn: true needs CUDA (torch's SyncBatchNorm rejects CPU tensors), but this run uses "
                f"{ctx.world_size} CPU processes; set train.sync_bn=false (each process then normalises with its "
                "own share of the batch; see docs/training.md) or train on GPUs"
            )
        kept = sync_batchnorms(model)
        if kept and ctx.is_main:
            warnings.warn(
                f"train.sync_bn: the DEQ cell BatchNorm(s) {', '.join(kept)} stay per process (they run at every "
                "solver iteration; see docs/training.md); every other BatchNorm is synchronised",
                stacklevel=2,
            )
    net = nn.parallel.DistributedDataParallel(
        model, device_ids=[ctx.device.index] if use_cuda else None,
        find_unused_parameters=cfg.find_unused_parameters,
    )
    return model, net


def autocast(ctx: DistContext, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``amp``; otherwise a no-op context."""
    if amp and ctx.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
