"""Training metrics: running sums over batches, their summaries, and the ``OUT/metrics.jsonl`` log.

Each rank keeps its own sums; summaries are taken over all ranks (``all_reduce``), so what rank 0 logs is
the metric of the global batch. The sums are stored in checkpoints, so an epoch summary survives a resume.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..fileio import append_line_synced
from ..objectives import unwrap
from .distributed import DistContext, all_reduce_sum
from .outputs import writes_into

# One block of running sums: loss * n, correct, n, sum of solver steps, number of step counts.
_BLOCK = 5


def nstep_of(model: nn.Module) -> torch.Tensor | None:
    """Solver steps per sample ``(N,)`` of the model's last forward pass (``model.last_info["nstep"]``), if any."""
    info = getattr(unwrap(model), "last_info", None)
    if isinstance(info, Mapping) and isinstance(info.get("nstep"), torch.Tensor):
        return info["nstep"]
    return None


def summary(sums: torch.Tensor) -> dict[str, float | None]:
    """Mean loss, accuracy (fraction) and solver steps of one block of sums; None where nothing was counted."""
    loss_n, correct, n, nstep, nstep_n = (float(v) for v in sums)
    return {
        "loss": loss_n / n if n else None,
        "acc": correct / n if n else None,
        "nstep": nstep / nstep_n if nstep_n else None,
    }


class RunningSums:
    """This rank's float64 sums (on its device) over the batches of the current epoch and logging window."""

    def __init__(self, device: torch.device, values: Sequence[float] | None = None) -> None:
        if values is None:
            self.values = torch.zeros(2 * _BLOCK, dtype=torch.float64, device=device)
        else:  # as stored in a checkpoint by :meth:`global_values`
            self.values = torch.tensor(values, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, nstep: torch.Tensor | None) -> None:
        """Count one batch: mean ``loss`` (scalar), ``logits`` ``(n, K)``, labels ``y`` ``(n,)``, ``nstep`` ``(n,)``."""
        device = self.values.device
        n = y.numel()
        batch = torch.stack([
            loss.detach().double() * n,
            (logits.detach().argmax(1) == y).sum().double(),
            torch.tensor(float(n), dtype=torch.float64, device=device),
        ])
        nstep_sums = (
            torch.stack([nstep.double().sum(), torch.tensor(float(nstep.numel()), device=device).double()])
            if nstep is not None else torch.zeros(2, dtype=torch.float64, device=device)
        )
        row = torch.cat([batch, nstep_sums])
        self.values[:_BLOCK] += row
        self.values[_BLOCK:] += row

    def take_window(self, ctx: DistContext) -> dict[str, float | None]:
        """Summary of the logging window over all ranks (a collective); the window restarts."""
        return self._take(ctx, slice(_BLOCK, None))

    def take_epoch(self, ctx: DistContext) -> dict[str, float | None]:
        """Summary of the epoch over all ranks (a collective); the epoch sums restart."""
        return self._take(ctx, slice(None, _BLOCK))

    def global_values(self, ctx: DistContext) -> list[float]:
        """All sums added over ranks (a collective), for a checkpoint."""
        return all_reduce_sum(ctx, self.values.clone()).tolist()

    def _take(self, ctx: DistContext, block: slice) -> dict[str, float | None]:
        total = all_reduce_sum(ctx, self.values[block].clone())
        self.values[block] = 0
        return summary(total)


class MetricsLog:
    """``OUT/metrics.jsonl``: one JSON object per line (keys sorted), each appended and fsync'ed. A failed write
    raises :class:`~lyadeq_zoo.errors.OutputWriteError` naming OUT."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def start_empty(self) -> None:
        """Create the log empty (a fresh run)."""
        with writes_into(self.path.parent, "metrics"):
            self.path.write_text("", encoding="utf-8")

    def append(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line; a kill loses at most this line."""
        with writes_into(self.path.parent, "metrics"):
            append_line_synced(self.path, json.dumps(record, sort_keys=True))

    def size(self) -> int:
        """Bytes written so far (0 before the log exists): what a checkpoint records to cut back to."""
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, size: int) -> None:
        """Drop what was written after byte ``size`` (lines of an interrupted run newer than its checkpoint)."""
        if self.path.exists():
            with writes_into(self.path.parent, "metrics"), open(self.path, "r+b") as f:
                f.truncate(size)
