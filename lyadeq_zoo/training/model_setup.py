"""The model side of a run: the model (seeded, ``train.init_from``), its optimizer and schedule, DDP, and the
precision of its feature extractor (``train.amp``: bf16 autocast around the backbone only; ``train.channels_last``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ..deq.cells import FixedPointBatchNorm
from ..factory import build_model
from ..hub import WEIGHTS_NAME, has_pretrained, load_pretrained_weights, load_weights, read_index
from ..objectives import unwrap
from .config import TrainConfig
from .distributed import DistContext
from .rng import seed_all

# The autocast dtype of ``train.amp``. bf16 keeps float32's exponent range, so no loss scaling is needed.
AMP_DTYPE = torch.bfloat16


def build_run_model(config: Mapping[str, Any], cfg: TrainConfig, ctx: DistContext, init_from: str | None) -> nn.Module:
    """The model of ``config``, initialised from ``train.seed`` (identically on every rank), then loaded from
    ``init_from`` if given, on this rank's device (its 4-d weights in channels_last layout when
    ``train.channels_last``, on CPU and CUDA). ``train.amp`` needs a model with a ``backbone`` module
    (:func:`backbone_autocast`); ConfigError otherwise, before anything is trained."""
    seed_all(cfg.seed)
    model = build_model(config)
    if cfg.amp and not isinstance(getattr(model, "backbone", None), nn.Module):
        raise ConfigError(
            f"train.amp: true autocasts the model's feature extractor (its `backbone` module) in bf16, but "
            f"{type(model).__name__} has no `backbone` attribute; set train.amp=false for this model"
        )
    if init_from is not None:
        load_initial_weights(model, init_from)
    model = model.to(ctx.device)
    if cfg.channels_last:
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


@contextlib.contextmanager
def backbone_autocast(model: nn.Module, amp: bool, channels_last: bool = False) -> Iterator[None]:
    """While inside, ``model.backbone`` (the feature extractor; ``model`` may be wrapped in DDP) runs in bf16
    autocast when ``amp`` and takes its input in channels_last layout when ``channels_last``; nothing else
    changes. On CPU and CUDA alike: the autocast device is the one the backbone's input is on.

    The backbone's output (the DEQ injection, ``(N, width)``) is cast back to float32, so the DEQ solver, the
    cell, the Lyapunov module, the head and the loss run in float32 exactly as without amp: the solver's 1e-4
    tolerance is out of bf16's reach (8 mantissa bits, a relative step of 4e-3), and Anderson's least-squares
    solve (``torch.linalg``) has no bf16 kernel. The backward pass follows the forward's dtypes. Hooks on the
    backbone do it (the model's own ``forward`` is untouched); they are removed on exit. Without a backbone
    (a plugin model) only ``amp`` is refused, by :func:`build_run_model`; here such a model runs as it is.
    """
    backbone = getattr(unwrap(model), "backbone", None)
    if not (amp or channels_last) or not isinstance(backbone, nn.Module):
        yield
        return
    entered: list[torch.autocast] = []

    def enter(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not args or not torch.is_tensor(args[0]):
            return None
        x = args[0]
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if amp:
            guard = torch.autocast(x.device.type, dtype=AMP_DTYPE)
            guard.__enter__()
            entered.append(guard)
        return (x, *args[1:])

    def leave(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        # Runs even when the backbone raised (always_call), so the autocast state never leaks out of it.
        if entered:
            entered.pop().__exit__(None, None, None)
            if torch.is_tensor(output) and output.is_floating_point():
                return output.float()
        return None

    handles = [backbone.register_forward_pre_hook(enter)]
    if amp:
        handles.append(backbone.register_forward_hook(leave, always_call=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
