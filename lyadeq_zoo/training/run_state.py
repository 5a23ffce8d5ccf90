"""The state of a training run, what a checkpoint stores of it, and how ``--resume`` puts it back.

A checkpoint holds the model, the optimizer and scheduler, every rank's RNG states, the running metric sums,
the history of logged records, the byte length of ``metrics.jsonl`` at that point, the resolved config and
the position, and the fingerprint of the data (see :mod:`.checkpoint` for the files). Resuming restores all of
it, so the run goes on as if it had never stopped; it refuses a config or training data other than the
checkpoint's.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ..fileio import to_json_value
from ..version import __version__
from .checkpoint import (
    CheckpointWarning,
    join_optimizer_state,
    load_latest,
    prune,
    save_checkpoint,
    split_optimizer_state,
)
from .config import RESUME_MUTABLE_KEYS, TrainConfig, config_differences
from .data import RunData, fingerprint_differences
from .distributed import DistContext, EpochBatchSampler, barrier
from .meters import MetricsLog, RunningSums
from .outputs import writes_into
from .rng import gather_rng_states, restore_rng_states


@dataclass
class Position:
    """Where a run stands: the next batch is ``step_in_epoch`` of ``epoch`` (0-based), after ``global_step`` steps."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


@dataclass
class TrainingRun:
    """Everything one call of :func:`~lyadeq_zoo.training.train` works on; it trains by mutating this."""

    config: dict[str, Any]
    cfg: TrainConfig
    ctx: DistContext
    data: RunData
    sampler: EpochBatchSampler
    model: nn.Module  # the bare model: what checkpoints and OUT/final hold
    objective: Any  # objective(net, x, y) -> (loss, logits)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    checkpoints: Path
    log: MetricsLog
    sums: RunningSums
    net: nn.Module  # the model, or its DistributedDataParallel wrapper once the run is distributed
    history: list[dict[str, Any]] = field(default_factory=list)
    position: Position = field(default_factory=Position)


def save_run(run: TrainingRun, next_epoch: int, next_step: int) -> None:
    """Checkpoint ``run`` so that a resume starts at step ``next_step`` of epoch ``next_epoch``, and prune to
    ``train.keep_last`` once it is written. Every rank must call it (it gathers their sums and RNG states); rank
    0 writes. A failed write raises OutputWriteError (naming OUT) and leaves the earlier checkpoints as they
    were; a non-finite tensor raises NonFiniteError and writes nothing."""
    ctx = run.ctx
    global_sums = run.sums.global_values(ctx)
    rng_tensors, rng_json = gather_rng_states(ctx)
    if not ctx.is_main:
        return
    opt_tensors, opt_rest = split_optimizer_state(run.optimizer.state_dict())
    state = {
        "position": {
            "epoch": next_epoch, "step_in_epoch": next_step, "global_step": run.position.global_step,
            "permutation_seed": run.sampler.permutation_seed(next_epoch),
            "steps_per_epoch": run.sampler.steps_per_epoch,
        },
        "optimizer": to_json_value(opt_rest),
        "scheduler": to_json_value(run.scheduler.state_dict()),
        "rng": rng_json,
        "sums": global_sums,
        "history": run.history,
        "metrics_bytes": run.log.size(),
        "config": run.config,
        "data": {split: dict(fp) for split, fp in run.data.fingerprints.items()},
        "world_size": ctx.world_size,
        "versions": {"lyadeq_zoo": __version__, "torch": torch.__version__},
    }
    tensors = {"model": run.model.state_dict(), "optimizer": opt_tensors, "rng": rng_tensors}
    with writes_into(run.checkpoints.parent, "checkpoints"):
        written = save_checkpoint(run.checkpoints, run.position.global_step, tensors, state)
        prune(run.checkpoints, run.cfg.keep_last, written)


def resume_run(run: TrainingRun) -> Path:
    """Restore ``run`` from the newest intact checkpoint in ``run.checkpoints``; returns that checkpoint.

    Rank 0 verifies first (setting damaged checkpoints aside, with a warning); then the other ranks read the
    one it settled on, so resuming needs OUT on a file system that every node sees. Raises ConfigError if the
    config differs from the checkpoint's in a key outside :data:`RESUME_MUTABLE_KEYS`, or if the training data
    differs from the checkpoint's (by content: the same data under another path is fine); a checkpoint that
    records no data fingerprint (older versions) resumes with a :class:`CheckpointWarning`.
    """
    ctx = run.ctx
    if ctx.is_main:
        path, tensors, state = load_latest(run.checkpoints)
    barrier(ctx)
    if not ctx.is_main:
        path, tensors, state = load_latest(run.checkpoints)
    _check_resumable(path, state["config"], run.config)
    _check_same_data(path, state.get("data"), run.data.fingerprints, warn=ctx.is_main)
    run.model.load_state_dict(tensors["model"], strict=True)
    run.optimizer.load_state_dict(join_optimizer_state(tensors["optimizer"], state["optimizer"]))
    run.scheduler.load_state_dict(state["scheduler"])
    restore_rng_states(ctx, tensors["rng"], state["rng"], run.cfg.seed)
    position = state["position"]
    run.position = Position(position["epoch"], position["step_in_epoch"], position["global_step"])
    run.history = list(state["history"])
    if ctx.is_main:  # the stored sums are already summed over ranks: rank 0 alone carries them on
        run.sums = RunningSums(ctx.device, state["sums"])
        run.log.truncate(state["metrics_bytes"])  # drop lines written after the checkpoint by the interrupted run
    if state.get("world_size") != ctx.world_size and ctx.is_main:
        print(f"note: resuming a {state.get('world_size')}-process run with {ctx.world_size} processes")
    return path


def _check_same_data(
    path: Path, saved: Mapping[str, Any] | None, current: Mapping[str, Mapping[str, Any]], warn: bool
) -> None:
    """Refuse (ConfigError) training data whose fingerprint differs from the checkpoint's; warn if it has none."""
    if not saved or "train" not in saved:
        if warn:
            warnings.warn(
                f"checkpoint {path} records no fingerprint of its training data (written by an older lyadeq_zoo): "
                "the data could not be verified; make sure it is the data the run started with",
                CheckpointWarning,
                stacklevel=3,
            )
        return
    before, now = saved["train"], current["train"]
    diffs = fingerprint_differences(before, now)
    if not diffs:
        return
    labels = {"dataset": "data set", "split": "split", "count": "image count", "sha256": "content sha256"}
    listing = "; ".join(f"{labels[key]}: checkpoint {a!r}, now {b!r}" for key, a, b in diffs)
    origin = f" (--data-dir {before['root']})" if before.get("root") else ""
    raise ConfigError(
        f"cannot resume from {path}: the training data differs from the data the run was trained on: {listing}. "
        f"The checkpoint's: {before.get('dataset')} {before.get('split')} split, {before.get('count')} images "
        f"read from {before.get('root')!r}; now: {now.get('count')} images read from {now.get('root')!r}. Resume "
        f"with the original data{origin}, or start a new run in another --out directory."
    )


def _check_resumable(path: Path, saved: dict[str, Any], config: dict[str, Any]) -> None:
    diffs = config_differences(saved, config)
    if diffs:
        listing = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in diffs)
        raise ConfigError(
            f"cannot resume from {path}: the config differs from the checkpoint's in {len(diffs)} "
            f"key(s): {listing}. Only these may change on resume: {', '.join(RESUME_MUTABLE_KEYS)}. Use the "
            "original config (OUT/config.yaml) or start a new run in another --out directory."
        )
