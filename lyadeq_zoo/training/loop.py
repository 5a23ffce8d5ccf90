"""The training loop behind ``tools/train.py``: :func:`train`.

One process, or one process per device under ``torchrun`` (DistributedDataParallel: gloo on CPU, NCCL on
CUDA; rank 0 logs and writes checkpoints). What ``OUT`` (``out_dir``) holds afterwards::

    OUT/config.yaml       the resolved config of the (last) invocation
    OUT/metrics.jsonl     one JSON object per line: "train" every log_every_steps, "epoch" summaries
                          (train loss/accuracy, test accuracy), "final" evaluation
    OUT/curves.png        loss and accuracy curves (train and test) per epoch
    OUT/checkpoints/      the last ``keep_last`` training checkpoints (see checkpoint.py)
    OUT/final/            ``lz.save_pretrained`` folder of the final weights

Exact resume: the data order is a function of ``(seed, epoch)`` (:class:`EpochBatchSampler`), the
augmentation of ``(seed, epoch, step)``, and every other random number comes from the global RNGs,
whose states (per rank) are in each checkpoint with the model, optimizer and scheduler; so a run that
is killed and resumed ends with the same weights, bit for bit, as one that never stopped (same device
type and thread count). Model state that is not in ``state_dict()`` would break this.

Nothing poisoned is kept: a NaN / inf loss or gradient stops the run at the step it happens, before the
optimizer step, with a :class:`~lyadeq_zoo.errors.NonFiniteError` naming the step and the quantity (see
:mod:`.finite`); no checkpoint is written after it, and the earlier ones stay. A failed write into ``OUT``
raises :class:`~lyadeq_zoo.errors.OutputWriteError` naming the folder.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import ConfigError, apply_overrides, load_config, validate_config
from ..errors import NonFiniteError
from ..evaluation import load_suite
from ..factory import list_models, zoo_config_path
from ..fileio import to_json_value
from ..registry import build_component
from .checkpoint import list_checkpoints
from .config import TrainConfig
from .data import RunData, augment_batch, batch_at, fingerprint, load_split, place, step_seed
from .distributed import DistContext, EpochBatchSampler, barrier, setup, teardown
from .finite import clip_grads, grad_norm, gradient_problem, nonfinite_flags
from .meters import MetricsLog, RunningSums, nstep_of
from .model_setup import backbone_autocast, build_run_model, distribute, make_optimizer
from .outputs import plot_curves, save_final, write_config, write_data_fingerprints, writes_into
from .rng import rank_seed, seed_all
from .run_eval import evaluate_clean, final_evaluation
from .run_state import TrainingRun, resume_run, save_run


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
    if str(config) in list_models():
        return load_config(zoo_config_path(str(config)), overrides)
    raise ConfigError(
        f"{str(config)!r} is neither a config file nor a zoo model name. Zoo models: {', '.join(list_models())}"
    )


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
        run = _start(config, cfg, out, ctx, resume, data_dir)
        resumed_from = resume_run(run) if resume else None
        if ctx.is_main:
            write_config(out, config)
            write_data_fingerprints(out, run.data.fingerprints)
            if not resume:
                run.log.start_empty()
        run.model, run.net = distribute(run.model, cfg, ctx)
        run.net.train()
        first_epoch = run.position.epoch
        for epoch in range(first_epoch, cfg.epochs):
            _train_epoch(run, epoch, progress, started)
        barrier(ctx)
        result = TrainResult(out_dir=out, model=run.model, history=run.history, resumed_from=resumed_from)
        if ctx.is_main:
            result.final_metrics, result.final_dir = _finish(run, out, progress, command)
        result.seconds = time.time() - started
        return result
    finally:
        teardown(ctx)


def _start(
    config: dict[str, Any], cfg: TrainConfig, out: Path, ctx: DistContext, resume: bool, data_dir: str | Path | None
) -> TrainingRun:
    """Check OUT, load the data, build model, objective and optimizer; nothing is written yet."""
    checkpoints = out / "checkpoints"
    if not resume and list_checkpoints(checkpoints):
        raise FileExistsError(
            f"{out} already holds checkpoints of a training run: pass --resume (resume=True) to continue "
            "it, or choose another --out directory"
        )
    data = _load_data(config, cfg, ctx, data_dir)
    sampler = EpochBatchSampler(data.train_x.shape[0], cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size)
    model = build_run_model(config, cfg, ctx, init_from=None if resume else cfg.init_from)
    objective = build_component("objective", cfg.objective)
    optimizer, scheduler = make_optimizer(model, cfg, cfg.epochs * sampler.steps_per_epoch)
    # Per-rank random streams (attack random starts, dropout ...), set after the identical model init.
    seed_all(rank_seed(cfg.seed, ctx.rank))
    return TrainingRun(
        config=config, cfg=cfg, ctx=ctx, data=data, sampler=sampler, model=model, objective=objective,
        optimizer=optimizer, scheduler=scheduler, checkpoints=checkpoints, log=MetricsLog(out / "metrics.jsonl"),
        sums=RunningSums(ctx.device), net=model,
    )


def _load_data(config: dict[str, Any], cfg: TrainConfig, ctx: DistContext, data_dir: str | Path | None) -> RunData:
    # The final attack suite is checked between the two splits, before anything exists in OUT, so that a
    # typo or a wrong data dir fails at once and leaves nothing behind.
    train_x, train_y, dataset = load_split(config, "train", data_dir, cfg.limit_train)
    if cfg.final_eval is not None:
        load_suite(cfg.final_eval, dataset)
    test_x, test_y, _ = load_split(config, "test", data_dir, cfg.limit_test)
    root = data_dir if data_dir is not None else (config.get("data") or {}).get("root")
    fingerprints = {
        "train": fingerprint(train_x, train_y, dataset, "train", root),
        "test": fingerprint(test_x, test_y, dataset, "test", root),
    }
    train_x, train_y = place(train_x, train_y, ctx, cfg.data_on_device)
    test_x, test_y = place(test_x, test_y, ctx, cfg.data_on_device)
    return RunData(train_x, train_y, test_x, test_y, dataset, fingerprints)


def _train_epoch(run: TrainingRun, epoch: int, progress: bool, started: float) -> None:
    """The steps of ``epoch`` from ``run.position.step_in_epoch``: log windows, the epoch summary (with the
    clean test evaluation every ``eval_every_epochs``) and checkpoints."""
    cfg, ctx = run.cfg, run.ctx
    steps_per_epoch = run.sampler.steps_per_epoch
    t_epoch = time.time()
    bar = tqdm(
        total=steps_per_epoch, initial=run.position.step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not (progress and ctx.is_main), dynamic_ncols=True, leave=True,
    )
    for step in range(run.position.step_in_epoch, steps_per_epoch):
        _train_step(run, epoch, step)
        bar.update(1)
        last = step == steps_per_epoch - 1
        if run.position.global_step % cfg.log_every_steps == 0 or last:
            _log_window(run, epoch, step, bar, started)
        if last:
            _end_epoch(run, epoch, bar, t_epoch)
            save_run(run, epoch + 1, 0)
        elif cfg.checkpoint_every_steps and run.position.global_step % cfg.checkpoint_every_steps == 0:
            save_run(run, epoch, step + 1)
    bar.close()
    run.position.epoch, run.position.step_in_epoch = epoch + 1, 0


def _train_step(run: TrainingRun, epoch: int, step: int) -> None:
    """One optimizer step on this rank's share of global batch ``step`` of ``epoch``."""
    cfg, ctx, sampler = run.cfg, run.ctx, run.sampler
    use_cuda = ctx.device.type == "cuda"
    x, y = batch_at(run.data.train_x, run.data.train_y, sampler.local_batch_indices(epoch, step), ctx.device)
    x = augment_batch(x, cfg.augment, step_seed(cfg.seed, epoch, step), cfg.batch_size, ctx.rank * sampler.local_batch)
    if cfg.channels_last and use_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    with backbone_autocast(run.model, cfg.amp, cfg.channels_last):
        loss, logits = run.objective(run.net, x, y)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in run.model.parameters() if p.grad is not None]
    total_norm = grad_norm(grads)
    _stop_if_not_finite(run, epoch, step, loss, total_norm)
    if cfg.grad_clip is not None:
        clip_grads(grads, cfg.grad_clip, total_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.position.global_step += 1
    run.sums.add(loss, logits, y, nstep_of(run.net))


def _stop_if_not_finite(run: TrainingRun, epoch: int, step: int, loss: torch.Tensor, total_norm: torch.Tensor) -> None:
    """Raise NonFiniteError if the loss (on any rank) or the gradient of step ``step`` of ``epoch`` is NaN / inf:
    before the optimizer step, so the weights stay finite and no checkpoint after the last good one is written."""
    loss_ranks, grad_bad = nonfinite_flags(loss, total_norm, run.ctx)
    if not loss_ranks and not grad_bad:
        return
    where = (
        f"epoch {epoch + 1}, step {step + 1} of {run.sampler.steps_per_epoch} "
        f"(global step {run.position.global_step + 1})"
    )
    if loss_ranks:
        on = f" on rank(s) {', '.join(map(str, loss_ranks))}" if run.ctx.distributed else ""
        value = float(loss.detach()) if run.ctx.rank in loss_ranks else "not finite"  # another rank's loss
        what = f"the training loss is {value}{on}"
    else:
        what = f"the loss is finite ({float(loss.detach()):.6g}) but {gradient_problem(run.model.named_parameters())}"
    good = list_checkpoints(run.checkpoints)
    last = (
        f"the last good checkpoint is {good[-1]} (train.init_from={good[-1] / 'model.safetensors'} starts a new "
        "run from its weights)" if good else "there is no checkpoint yet"
    )
    raise NonFiniteError(
        f"non-finite value at {where}: {what}. The optimizer step was not taken and no checkpoint was written; "
        f"{last}. Lower train.lr, set train.grad_clip, or check the data and the model's solver settings, and "
        "start a new --out (--resume repeats the same steps exactly)."
    )


def _log_window(run: TrainingRun, epoch: int, step: int, bar: tqdm, started: float) -> None:
    """A "train" record of the steps since the last one (rank 0 logs it)."""
    stats = run.sums.take_window(run.ctx)
    global_step = run.position.global_step
    if not run.ctx.is_main:
        return
    record = {
        "kind": "train", "epoch": epoch + 1, "step": step + 1, "global_step": global_step,
        "epoch_float": epoch + (step + 1) / run.sampler.steps_per_epoch, "lr": run.scheduler.get_last_lr()[0],
        **stats, "time": round(time.time() - started, 3),
    }
    run.history.append(record)
    run.log.append(record)
    bar.set_postfix(
        loss=f"{stats['loss']:.4f}", acc=f"{100 * stats['acc']:.1f}%",
        nstep="-" if stats["nstep"] is None else f"{stats['nstep']:.1f}", lr=f"{record['lr']:.2e}",
    )


def _end_epoch(run: TrainingRun, epoch: int, bar: tqdm, t_epoch: float) -> None:
    """The "epoch" record: train metrics over the epoch, and the clean test metrics when due."""
    cfg, ctx = run.cfg, run.ctx
    stats = run.sums.take_epoch(ctx)
    record = {
        "kind": "epoch", "epoch": epoch + 1, "global_step": run.position.global_step,
        "train_loss": stats["loss"], "train_acc": stats["acc"], "train_nstep": stats["nstep"],
        "lr": run.scheduler.get_last_lr()[0], "epoch_seconds": round(time.time() - t_epoch, 3),
    }
    every = cfg.eval_every_epochs
    if every and ((epoch + 1) % every == 0 or epoch + 1 == cfg.epochs):
        amp = cfg.amp and ctx.device.type == "cuda"
        record.update(evaluate_clean(run.net, run.data.test_x, run.data.test_y, ctx, cfg.eval_batch_size, amp))
        run.net.train()
    if not ctx.is_main:
        return
    run.history.append(record)
    run.log.append(record)
    test = f", test acc {100 * record['test_acc']:.2f}%" if "test_acc" in record else ""
    bar.write(
        f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, "
        f"train acc {100 * record['train_acc']:.2f}%{test} ({record['epoch_seconds']:.1f} s)"
    )


def _finish(
    run: TrainingRun, out: Path, progress: bool, command: str | None
) -> tuple[dict[str, Any] | None, Path]:
    """Rank 0, after the last epoch: curves.png, the final evaluation (logged as "final"), OUT/final."""
    with writes_into(out, "curves.png"):
        plot_curves(run.history, out / "curves.png")
    data = run.data
    metrics = final_evaluation(run.model, run.cfg, data.test_x, data.test_y, run.ctx, data.dataset, progress)
    if metrics is not None:
        run.log.append({"kind": "final", **to_json_value(metrics)})
    with writes_into(out, "the final model"):
        final_dir = save_final(run.model, out / "final", metrics, data.dataset, command, run.history)
    return metrics, final_dir
