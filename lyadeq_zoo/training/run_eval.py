"""The evaluations a training run makes: clean test accuracy after epochs, and the final ``lz.evaluate``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..evaluation import evaluate
from ..objectives import unwrap
from .config import TrainConfig
from .data import batch_at, to_float
from .distributed import DistContext, all_reduce_sum
from .meters import nstep_of
from .model_setup import backbone_autocast


@torch.no_grad()
def evaluate_clean(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: DistContext, batch_size: int, amp: bool
) -> dict[str, float]:
    """Clean accuracy (fraction), mean cross-entropy and mean solver steps on ``images``/``labels``.

    The samples are sharded over ranks (rank ``r`` takes every ``world_size``-th from ``r``) and the sums
    added over ranks, so every rank returns the same numbers. The model is in eval mode meanwhile.
    """
    net = unwrap(model)
    was_training = net.training
    net.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # loss*n, correct, n, nstep mean sum
    shard = torch.arange(ctx.rank, images.shape[0], ctx.world_size)
    try:
        for start in range(0, shard.numel(), batch_size):
            x, y = batch_at(images, labels, shard[start : start + batch_size], ctx.device)
            with backbone_autocast(net, amp):
                logits = net(x).float()
            sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += y.numel()
            nstep = nstep_of(net)
            if nstep is not None:
                sums[3] += nstep.double().sum()
    finally:
        net.train(was_training)
    all_reduce_sum(ctx, sums)
    n = float(sums[2])
    return {"test_loss": float(sums[0]) / n, "test_acc": float(sums[1]) / n, "test_nstep": float(sums[3]) / n}


def final_evaluation(
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
    attack specs); ``null`` skips it (returns None)."""
    if cfg.final_eval is None:
        return None
    batches = [
        (to_float(test_x[i : i + cfg.eval_batch_size]), test_y[i : i + cfg.eval_batch_size])
        for i in range(0, test_x.shape[0], cfg.eval_batch_size)
    ]
    return evaluate(
        model, batches, cfg.final_eval, device=ctx.device, seed=cfg.seed, progress=progress,
        dataset=dataset, batch_size=cfg.eval_batch_size,
    )
