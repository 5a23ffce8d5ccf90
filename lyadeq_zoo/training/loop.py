"""The training loop behind ``tools/train.py``: :func:`train`.

One process, or one process per device under ``torchrun`` (DistributedDataParallel: gloo on CPU, NCCL on
CUDA; rank 0 logs and writes checkpoints). What ``OUT`` (``out_dir``) holds afterwards::

    OUT/config.yaml       the resolved config of the (last) invocation
    OUT/metrics.jsonl     one JSON object per line: "train" every log_every_steps, "epoch" summaries
                          (train loss/accuracy, test accuracy), "final" evaluation
    OUT/curves.png        loss and accuracy curves (train and test) per epoch
    OUT/checkpoints/      the last ``keep_last`` training checkpoints (see checkpoint.py)
    OUT/final/            ``lz.save_pretrained`` folder of the final weights (when lyadeq_zoo.hub exists)

Exact resume: the data order is a function of ``(seed, epoch)`` (:class:`EpochBatchSampler`), the
augmentation of ``(seed, epoch, step)``, and every other random number comes from the global RNGs,
whose states (per rank) are in each checkpoint with the model, optimizer and scheduler; so a run that
is killed and resumed ends with the same weights, bit for bit, as one that never stopped (same device
type and thread count). Model state that is not in ``state_dict()`` would break this.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from .. import __version__
from ..config import ConfigError, accepted_keys, apply_overrides, load_config, validate_config
from ..factory import build_model
from ..objectives import unwrap
from ..registry import build_component, get_component
from . import checkpoint as ckpt
from .config import RESUME_MUTABLE_KEYS, TrainConfig, config_differences
from .distributed import DistContext, EpochBatchSampler, all_reduce_sum, barrier, gather_bytes, setup, teardown

# Running sums kept per rank: epoch (loss*n, correct, n, nstep sum, nstep count), then the same for the
# current logging window. Stored (summed over ranks) in checkpoints so summaries survive a resume.
_ACC = 10


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank; ``final_dir``/``final_metrics`` only on rank 0)."""

    out_dir: Path
    model: nn.Module
    history: list[dict[str, Any]]
    final_metrics: dict[str, Any] | None = None
    final_dir: Path | None = None
    resumed_from: Path | None = None
    seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)


# -- config resolution -----------------------------------------------------------------------------
def resolve_config(config: Mapping[str, Any] | str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """A validated config from a dict, a YAML path or a zoo model name (``lyadeq_mnist``), with
    ``a.b=c`` overrides applied."""
    overrides = list(overrides)
    if isinstance(config, Mapping):
        resolved = apply_overrides(dict(config), overrides)
        validate_config(resolved)
        return resolved
    path = Path(config)
    if path.is_file():
        return load_config(path, overrides)
    from ..factory import list_models, zoo_config_path

    if str(config) in list_models():
        return load_config(zoo_config_path(str(config)), overrides)
    raise ConfigError(
        f"{str(config)!r} is neither a config file nor a zoo model name. Zoo models: {', '.join(list_models())}"
    )


# -- data ----------------------------------------------------------------------------------------------
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


def _to_float(images: torch.Tensor) -> torch.Tensor:
    # Same conversion as ImageDataset.__getitem__ (float, then / 255), so tensors equal the items.
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def _place(images: torch.Tensor, labels: torch.Tensor, ctx: DistContext, on_device: bool) -> tuple[torch.Tensor, ...]:
    if ctx.device.type != "cuda":
        return images, labels
    if on_device:
        free, _ = torch.cuda.mem_get_info(ctx.device)
        if images.numel() * images.element_size() < 0.3 * free:
            return images.to(ctx.device), labels.to(ctx.device)
    return images.pin_memory(), labels.pin_memory()


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


# -- RNG state -----------------------------------------------------------------------------------------
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_json() -> dict[str, Any]:
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [py[0], list(py[1]), py[2]], "numpy": [name, keys.tolist(), pos, has_gauss, cached]}


def _set_rng_json(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _gather_rng(ctx: DistContext) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every rank's RNG states: (uint8 tensors for safetensors, JSON part), keyed by rank."""
    cpu = gather_bytes(ctx, torch.get_rng_state())
    cuda_state = torch.empty(0, dtype=torch.uint8)
    if ctx.device.type == "cuda":
        cuda_state = torch.cuda.get_rng_state(ctx.device)
    cuda = gather_bytes(ctx, cuda_state)
    text = torch.frombuffer(bytearray(json.dumps(_rng_json()).encode()), dtype=torch.uint8)
    blobs = gather_bytes(ctx, text)
    tensors: dict[str, torch.Tensor] = {}
    json_part: dict[str, Any] = {}
    for rank in range(ctx.world_size):
        tensors[f"rank{rank}.torch_cpu"] = cpu[rank]
        if cuda[rank].numel():
            tensors[f"rank{rank}.cuda"] = cuda[rank]
        json_part[str(rank)] = json.loads(bytes(blobs[rank].tolist()).decode())
    return tensors, json_part


def _restore_rng(
    ctx: DistContext, tensors: Mapping[str, torch.Tensor], json_part: Mapping[str, Any], seed: int
) -> None:
    key = f"rank{ctx.rank}.torch_cpu"
    if key not in tensors:
        warnings.warn(
            f"the checkpoint has no RNG state for rank {ctx.rank} (it was written by fewer processes); "
            "this rank's random streams are re-seeded, so the run is no longer bit-exact",
            stacklevel=3,
        )
        _seed_all(seed * 1000 + ctx.rank + 1)
        return
    torch.set_rng_state(tensors[key])
    if ctx.device.type == "cuda" and f"rank{ctx.rank}.cuda" in tensors:
        torch.cuda.set_rng_state(tensors[f"rank{ctx.rank}.cuda"], ctx.device)
    _set_rng_json(json_part[str(ctx.rank)])


# -- metrics -------------------------------------------------------------------------------------------
def _nstep_of(model: nn.Module) -> torch.Tensor | None:
    info = getattr(unwrap(model), "last_info", None)
    if isinstance(info, Mapping) and isinstance(info.get("nstep"), torch.Tensor):
        return info["nstep"]
    return None


def _summary(sums: torch.Tensor) -> dict[str, float | None]:
    loss_n, correct, n, nstep, nstep_n = (float(v) for v in sums)
    return {
        "loss": loss_n / n if n else None,
        "acc": correct / n if n else None,
        "nstep": nstep / nstep_n if nstep_n else None,
    }


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


@torch.no_grad()
def evaluate_clean(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: DistContext, batch_size: int, amp: bool
) -> dict[str, float]:
    """Clean accuracy and mean cross-entropy on ``images``/``labels`` (sharded over ranks, summed)."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # loss*n, correct, n, nstep mean sum
    shard = torch.arange(ctx.rank, images.shape[0], ctx.world_size)
    try:
        for start in range(0, shard.numel(), batch_size):
            idx = shard[start : start + batch_size]
            x = _to_float(images[idx.to(images.device)].to(ctx.device, non_blocking=True))
            y = labels[idx.to(labels.device)].to(ctx.device, non_blocking=True)
            with _autocast(ctx, amp):
                logits = net(x).float()
            sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += y.numel()
            nstep = _nstep_of(net)
            if nstep is not None:
                sums[3] += nstep.double().sum()
    finally:
        net.train(was_training)
    all_reduce_sum(ctx, sums)
    n = float(sums[2])
    return {"test_loss": float(sums[0]) / n, "test_acc": float(sums[1]) / n, "test_nstep": float(sums[3]) / n}


def _autocast(ctx: DistContext, amp: bool) -> contextlib.AbstractContextManager:
    if amp and ctx.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def plot_curves(history: list[Mapping[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch (train and, where measured, test) into a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r for r in history if r.get("kind") == "epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    x = [r["epoch"] for r in epochs]
    ax_loss.plot(x, [r["train_loss"] for r in epochs], "o-", label="train")
    ax_acc.plot(x, [100 * r["train_acc"] for r in epochs], "o-", label="train")
    tested = [r for r in epochs if r.get("test_acc") is not None]
    if tested:
        ax_loss.plot([r["epoch"] for r in tested], [r["test_loss"] for r in tested], "s-", label="test (clean)")
        ax_acc.plot([r["epoch"] for r in tested], [100 * r["test_acc"] for r in tested], "s-", label="test (clean)")
    steps = [r for r in history if r.get("kind") == "train"]
    if steps:
        ax_loss.plot(
            [r["epoch_float"] for r in steps], [r["loss"] for r in steps], lw=0.5, alpha=0.5, label="train (steps)"
        )
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- optimisation ----------------------------------------------------------------------------------
def _make_optimizer(model: nn.Module, cfg: TrainConfig, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=cfg.min_lr)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return optimizer, scheduler


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (float, int, str, bool)) or value is None:
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a JSON checkpoint: {value!r}")


# -- the loop ----------------------------------------------------------------------------------------
def train(
    config: Mapping[str, Any] | str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    data_dir: str | Path | None = None,
    overrides: Iterable[str] = (),
    progress: bool = True,
    command: str | None = None,
) -> TrainResult:
    """Train the model of ``config`` (dict, YAML path or zoo name) into ``out_dir``.

    ``resume=True`` continues from the newest intact checkpoint in ``out_dir/checkpoints`` (the config
    must match the checkpoint's except for :data:`RESUME_MUTABLE_KEYS`); ``data_dir`` replaces
    ``data.root``; ``overrides`` are ``a.b=c`` strings; ``command`` is recorded in the model card.
    Launched by ``torchrun``, each process calls this and they train together (DDP).
    """
    started = time.time()
    config = resolve_config(config, overrides)
    cfg = TrainConfig.from_dict(config.get("train"))
    out = Path(out_dir)
    ctx = setup(cfg.device)
    try:
        return _train(config, cfg, out, ctx, resume, data_dir, progress, command, started)
    finally:
        teardown(ctx)


def _train(
    config: dict[str, Any],
    cfg: TrainConfig,
    out: Path,
    ctx: DistContext,
    resume: bool,
    data_dir: str | Path | None,
    progress: bool,
    command: str | None,
    started: float,
) -> TrainResult:
    ckpt_root = out / "checkpoints"
    metrics_path = out / "metrics.jsonl"
    if not resume and ckpt.list_checkpoints(ckpt_root):
        raise FileExistsError(
            f"{out} already holds checkpoints of a training run: pass --resume (resume=True) to continue "
            "it, or choose another --out directory"
        )
    # Check the final attack suite and load the data before creating anything in OUT, so that a typo or
    # a wrong data dir fails at once and leaves nothing behind.
    train_x, train_y, dataset_name = load_split(config, "train", data_dir, cfg.limit_train)
    if cfg.final_eval is not None:
        from ..evaluation import load_suite

        load_suite(cfg.final_eval, dataset_name)
    test_x, test_y, _ = load_split(config, "test", data_dir, cfg.limit_test)
    use_cuda = ctx.device.type == "cuda"
    train_x, train_y = _place(train_x, train_y, ctx, cfg.data_on_device)
    test_x, test_y = _place(test_x, test_y, ctx, cfg.data_on_device)
    sampler = EpochBatchSampler(train_x.shape[0], cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = cfg.epochs * steps_per_epoch

    _seed_all(cfg.seed)
    model = build_model(config)
    if cfg.init_from is not None and not resume:
        load_initial_weights(model, cfg.init_from)
    model = model.to(ctx.device)
    if cfg.channels_last and use_cuda:
        model = model.to(memory_format=torch.channels_last)
    objective = build_component("objective", cfg.objective)
    optimizer, scheduler = _make_optimizer(model, cfg, total_steps)
    # Per-rank random streams (attack random starts, dropout ...), set after the identical model init.
    _seed_all(cfg.seed * 1000 + ctx.rank + 1)

    epoch, step_in_epoch, global_step = 0, 0, 0
    sums = torch.zeros(_ACC, dtype=torch.float64, device=ctx.device)
    history: list[dict[str, Any]] = []
    resumed_from = None
    if resume:
        # Rank 0 verifies first (and sets damaged checkpoints aside, with a warning); then the others read
        # the checkpoint it settled on. Resuming needs OUT on a file system that every node sees.
        if ctx.is_main:
            resumed_from, tensors, state = ckpt.load_latest(ckpt_root)
        barrier(ctx)
        if not ctx.is_main:
            resumed_from, tensors, state = ckpt.load_latest(ckpt_root)
        diffs = config_differences(state["config"], config)
        if diffs:
            listing = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in diffs)
            raise ConfigError(
                f"cannot resume from {resumed_from}: the config differs from the checkpoint's in {len(diffs)} "
                f"key(s): {listing}. Only these may change on resume: {', '.join(RESUME_MUTABLE_KEYS)}. Use the "
                "original config (OUT/config.yaml) or start a new run in another --out directory."
            )
        model.load_state_dict(tensors["model"], strict=True)
        optimizer.load_state_dict(ckpt.join_optimizer_state(tensors["optimizer"], state["optimizer"]))
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(ctx, tensors["rng"], state["rng"], cfg.seed)
        position = state["position"]
        epoch, step_in_epoch, global_step = position["epoch"], position["step_in_epoch"], position["global_step"]
        history = list(state["history"])
        if ctx.is_main:
            sums = torch.tensor(state["sums"], dtype=torch.float64, device=ctx.device)
            if metrics_path.exists():  # drop lines written after the checkpoint by the interrupted run
                with open(metrics_path, "r+b") as f:
                    f.truncate(state["metrics_bytes"])
        if state.get("world_size") != ctx.world_size and ctx.is_main:
            print(f"note: resuming a {state.get('world_size')}-process run with {ctx.world_size} processes")

    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        if not resume:
            metrics_path.write_text("", encoding="utf-8")

    net = model
    if ctx.distributed:
        if cfg.sync_bn:
            if use_cuda:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif ctx.is_main:
                warnings.warn("train.sync_bn needs CUDA (SyncBatchNorm has no CPU kernel); ignored", stacklevel=2)
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if use_cuda else None,
            find_unused_parameters=cfg.find_unused_parameters,
        )

    def write_checkpoint(next_epoch: int, next_step: int) -> None:
        global_sums = all_reduce_sum(ctx, sums.clone())
        rng_tensors, rng_json = _gather_rng(ctx)
        if not ctx.is_main:
            return
        opt_tensors, opt_rest = ckpt.split_optimizer_state(optimizer.state_dict())
        state = {
            "position": {
                "epoch": next_epoch, "step_in_epoch": next_step, "global_step": global_step,
                "permutation_seed": sampler.permutation_seed(next_epoch), "steps_per_epoch": steps_per_epoch,
            },
            "optimizer": _jsonable(opt_rest),
            "scheduler": _jsonable(scheduler.state_dict()),
            "rng": rng_json,
            "sums": global_sums.tolist(),
            "history": history,
            "metrics_bytes": metrics_path.stat().st_size if metrics_path.exists() else 0,
            "config": config,
            "world_size": ctx.world_size,
            "versions": {"lyadeq_zoo": __version__, "torch": torch.__version__},
        }
        tensors = {"model": unwrap(model).state_dict(), "optimizer": opt_tensors, "rng": rng_tensors}
        ckpt.save_checkpoint(ckpt_root, global_step, tensors, state)
        ckpt.prune(ckpt_root, cfg.keep_last)

    from tqdm.auto import tqdm

    start_epoch = epoch

    use_amp = cfg.amp and use_cuda
    net.train()
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch = time.time()
        bar = tqdm(
            total=steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (progress and ctx.is_main), dynamic_ncols=True, leave=True,
        )
        for step in range(step_in_epoch, steps_per_epoch):
            idx = sampler.local_batch_indices(epoch, step)
            x = _to_float(train_x[idx.to(train_x.device)].to(ctx.device, non_blocking=True))
            y = train_y[idx.to(train_y.device)].to(ctx.device, non_blocking=True)
            x = augment_batch(
                x, cfg.augment, step_seed(cfg.seed, epoch, step), cfg.batch_size, ctx.rank * sampler.local_batch
            )
            if cfg.channels_last and use_cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(ctx, use_amp):
                loss, logits = objective(net, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            global_step += 1

            with torch.no_grad():
                n = y.numel()
                batch = torch.stack([
                    loss.detach().double() * n,
                    (logits.detach().argmax(1) == y).sum().double(),
                    torch.tensor(float(n), dtype=torch.float64, device=ctx.device),
                ])
                nstep = _nstep_of(net)
                nstep_sums = (
                    torch.stack([nstep.double().sum(), torch.tensor(float(nstep.numel()), device=ctx.device).double()])
                    if nstep is not None else torch.zeros(2, dtype=torch.float64, device=ctx.device)
                )
                row = torch.cat([batch, nstep_sums])
                sums[:5] += row
                sums[5:] += row
            bar.update(1)
            if global_step % cfg.log_every_steps == 0 or step == steps_per_epoch - 1:
                window = all_reduce_sum(ctx, sums[5:].clone())
                sums[5:] = 0
                stats = _summary(window)
                if stats["loss"] is not None and not math.isfinite(stats["loss"]):
                    raise FloatingPointError(
                        f"the training loss is {stats['loss']} at step {global_step} (epoch {epoch + 1}); "
                        "lower train.lr, set train.grad_clip, or check the model's solver settings"
                    )
                if ctx.is_main:
                    record = {
                        "kind": "train", "epoch": epoch + 1, "step": step + 1, "global_step": global_step,
                        "epoch_float": epoch + (step + 1) / steps_per_epoch, "lr": scheduler.get_last_lr()[0],
                        **stats, "time": round(time.time() - started, 3),
                    }
                    history.append(record)
                    _append_jsonl(metrics_path, record)
                    bar.set_postfix(
                        loss=f"{stats['loss']:.4f}", acc=f"{100 * stats['acc']:.1f}%",
                        nstep="-" if stats["nstep"] is None else f"{stats['nstep']:.1f}",
                        lr=f"{record['lr']:.2e}",
                    )
            last = step == steps_per_epoch - 1
            if last:
                epoch_sums = all_reduce_sum(ctx, sums[:5].clone())
                sums[:5] = 0
                stats = _summary(epoch_sums)
                record = {
                    "kind": "epoch", "epoch": epoch + 1, "global_step": global_step,
                    "train_loss": stats["loss"], "train_acc": stats["acc"], "train_nstep": stats["nstep"],
                    "lr": scheduler.get_last_lr()[0], "epoch_seconds": round(time.time() - t_epoch, 3),
                }
                k = cfg.eval_every_epochs
                if k and ((epoch + 1) % k == 0 or epoch + 1 == cfg.epochs):
                    record.update(evaluate_clean(net, test_x, test_y, ctx, cfg.eval_batch_size, use_amp))
                    net.train()
                if ctx.is_main:
                    history.append(record)
                    _append_jsonl(metrics_path, record)
                    test = f", test acc {100 * record['test_acc']:.2f}%" if "test_acc" in record else ""
                    bar.write(
                        f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, "
                        f"train acc {100 * record['train_acc']:.2f}%{test} ({record['epoch_seconds']:.1f} s)"
                    )
                write_checkpoint(epoch + 1, 0)
            elif cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0:
                write_checkpoint(epoch, step + 1)
        bar.close()
        step_in_epoch = 0

    barrier(ctx)
    result = TrainResult(out_dir=out, model=unwrap(model), history=history, resumed_from=resumed_from)
    if ctx.is_main:
        plot_curves(history, out / "curves.png")
        result.final_metrics = _final_evaluation(unwrap(model), cfg, test_x, test_y, ctx, dataset_name, progress)
        if result.final_metrics is not None:
            _append_jsonl(metrics_path, {"kind": "final", **_jsonable(result.final_metrics)})
        result.final_dir = _save_final(
            unwrap(model), out / "final", result.final_metrics, dataset_name, command, history
        )
    result.seconds = time.time() - started
    return result


# -- the end of a run --------------------------------------------------------------------------------
def load_initial_weights(model: nn.Module, source: str) -> nn.Module:
    """Load ``train.init_from`` into ``model`` strictly: a zoo name with pretrained weights, a folder
    holding ``model.safetensors`` (a save_pretrained or ``OUT/final`` folder) or a ``.safetensors`` file."""
    from ..hub import WEIGHTS_NAME, has_pretrained, load_pretrained_weights, load_weights, read_registry

    path = Path(source).expanduser()
    if path.is_dir():
        return load_weights(model, path / WEIGHTS_NAME, source=f"train.init_from {source!r}")
    if path.is_file():
        return load_weights(model, path, source=f"train.init_from {source!r}")
    if has_pretrained(source):
        return load_pretrained_weights(model, source)
    raise ConfigError(
        f"train.init_from {source!r} is neither a file, a folder, nor a zoo name with pretrained weights "
        f"(with weights: {', '.join(sorted(read_registry())) or 'none'})"
    )


def _last_epoch(history: list[Mapping[str, Any]]) -> dict[str, Any]:
    epochs = [r for r in history if r.get("kind") == "epoch"]
    return dict(epochs[-1]) if epochs else {}


def _final_evaluation(
    model: nn.Module,
    cfg: TrainConfig,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    ctx: DistContext,
    dataset: str,
    progress: bool,
) -> dict[str, Any] | None:
    """Clean + attack evaluation of the final model through ``lz.evaluate`` on the (limited) test split
    (rank 0). ``train.final_eval`` names the suite (``paper``, ``strong``, a YAML path or a list of
    attack specs); ``null`` skips it."""
    if cfg.final_eval is None:
        return None
    from ..evaluation import evaluate

    batches = [
        (_to_float(test_x[i : i + cfg.eval_batch_size]), test_y[i : i + cfg.eval_batch_size])
        for i in range(0, test_x.shape[0], cfg.eval_batch_size)
    ]
    return evaluate(
        model, batches, cfg.final_eval, device=ctx.device, seed=cfg.seed, progress=progress,
        dataset=dataset, batch_size=cfg.eval_batch_size,
    )


def _save_final(
    model: nn.Module,
    directory: Path,
    final_metrics: Mapping[str, Any] | None,
    dataset: str,
    command: str | None,
    history: list[Mapping[str, Any]],
) -> Path | None:
    from ..hub import save_pretrained

    metrics = dict(final_metrics) if final_metrics else {}
    last = _last_epoch(history)
    if "test_acc" in last:
        metrics.setdefault("clean_accuracy", last["test_acc"])
    epochs = last.get("epoch")
    model.eval()
    # DIR/final: the card is named after the run folder (e.g. runs/zoo/lyadeq_mnist), not "final".
    save_pretrained(
        model, directory, metrics=metrics, dataset=dataset, train_command=command, epochs=epochs,
        name=directory.parent.name,
    )
    return directory


def default_command(argv: list[str] | None = None) -> str:
    """The command line that started this process (for the model card)."""
    import shlex

    argv = sys.argv if argv is None else argv
    return "python " + shlex.join(argv)
