"""What a run folder (``lyadeq-train --out``) says about its run: epochs done of those planned, the last clean
test accuracy, seconds per epoch, whether it finished, its newest checkpoint, and its evaluations; and the
short table the pipeline prints last.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..training.checkpoint import list_checkpoints

EVAL_PREFIX = "eval-"  # WORK/runs/<name>/eval-<suite>.json: the lyadeq-eval --json result of the final model


@dataclass
class RunProgress:
    """One run folder's facts. ``global_step`` is the newest checkpoint's; ``evals`` maps a suite to
    ``{"clean": fraction, "worst": fraction at the largest eps, "eps_255": that eps, "n": images}``."""

    name: str
    epochs_done: int = 0
    epochs_planned: int | None = None
    last_test_acc: float | None = None
    seconds_per_epoch: float | None = None
    global_step: int | None = None
    finished: bool = False
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``metrics.jsonl`` (a last line cut by a kill is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def planned_epochs(run_dir: Path) -> int | None:
    """``train.epochs`` of the run's resolved config (``config.yaml``), or None before the run wrote one."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    epochs = (config.get("train") or {}).get("epochs")
    return int(epochs) if isinstance(epochs, int) else None


def is_finished(run_dir: Path) -> bool:
    """Whether the run wrote its ``final/`` folder (weights and model card): training is over."""
    final = run_dir / "final"
    return (final / "model.safetensors").is_file() and (final / "config.json").is_file()


def checkpoint_step(path: Path) -> int:
    """The global step in a checkpoint folder's name (``step-000001200`` -> 1200)."""
    return int(path.name.split("-", 1)[1])


def read_evals(run_dir: Path) -> dict[str, dict[str, Any]]:
    """``{suite: {"clean", "worst", "eps_255", "n"}}`` of the ``eval-<suite>.json`` results in ``run_dir``."""
    evals: dict[str, dict[str, Any]] = {}
    for path in sorted(run_dir.glob(f"{EVAL_PREFIX}*.json")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        worst = max(result.get("worst_case") or [], key=lambda w: w["eps"], default=None)
        evals[path.stem.removeprefix(EVAL_PREFIX)] = {
            "clean": (result.get("clean") or {}).get("accuracy"),
            "worst": None if worst is None else worst.get("accuracy"),
            "eps_255": None if worst is None else worst.get("eps_255"),
            "n": result.get("n"),
        }
    return evals


def run_progress(run_dir: str | Path, name: str | None = None) -> RunProgress:
    """The :class:`RunProgress` of run folder ``run_dir`` (any state, also absent: nothing done)."""
    run_dir = Path(run_dir)
    progress = RunProgress(name or run_dir.name, epochs_planned=planned_epochs(run_dir))
    epochs = [r for r in read_records(run_dir / "metrics.jsonl") if r.get("kind") == "epoch"]
    if epochs:
        progress.epochs_done = int(epochs[-1]["epoch"])
        tested = [r["test_acc"] for r in epochs if r.get("test_acc") is not None]
        progress.last_test_acc = tested[-1] if tested else None
        seconds = [r["epoch_seconds"] for r in epochs if r.get("epoch_seconds") is not None]
        progress.seconds_per_epoch = statistics.median(seconds) if seconds else None
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    progress.global_step = checkpoint_step(checkpoints[-1]) if checkpoints else None
    progress.finished = is_finished(run_dir)
    progress.evals = read_evals(run_dir)
    return progress


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def format_table(rows: Iterable[RunProgress], states: Mapping[str, str] | None = None) -> list[str]:
    """The table printed last: per run its state, epochs done / planned, last clean test accuracy (per-epoch
    evaluation), median seconds per epoch, and each evaluation's clean and worst-case accuracy."""
    states = states or {}
    lines = [
        f"{'run':<26} {'state':<9} {'epochs':>8} {'test acc':>9} {'s/epoch':>8}  evaluation (clean / worst case)",
    ]
    for row in rows:
        planned = "?" if row.epochs_planned is None else str(row.epochs_planned)
        seconds = "-" if row.seconds_per_epoch is None else f"{row.seconds_per_epoch:.1f}"
        state = states.get(row.name, "finished" if row.finished else "-")
        evals = "; ".join(
            f"{suite}: {_pct(e['clean'])} / {_pct(e['worst'])}"
            + (f" at {e['eps_255']:g}/255" if e.get("eps_255") is not None else "")
            for suite, e in row.evals.items()
        ) or "-"
        lines.append(
            f"{row.name:<26} {state:<9} {f'{row.epochs_done}/{planned}':>8} {_pct(row.last_test_acc):>9} "
            f"{seconds:>8}  {evals}"
        )
    return lines
