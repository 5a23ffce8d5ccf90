"""What a run writes into OUT besides checkpoints and metrics: ``config.yaml``, ``data.json``, ``curves.png``,
``final/``; and :func:`writes_into`, which turns an OS error of any write into OUT into one clear error."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..errors import OutputWriteError
from ..fileio import write_json_atomic, write_text_atomic
from ..hub import save_pretrained

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


@contextlib.contextmanager
def writes_into(out: Path, what: str) -> Iterator[None]:
    """Run a write of ``what`` (``"checkpoints"``, ``"metrics"`` ...) into the run folder ``out``; an
    :class:`OSError` becomes :class:`~lyadeq_zoo.errors.OutputWriteError` with a one-line message naming the
    folder, the OS error and what to do, e.g. ``cannot write checkpoints to runs/x: [Errno 28] No space left
    on device — free space or choose another --out``."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as err:
        if err.errno in _FULL:
            hint = "free space or choose another --out"
        elif err.errno in _NOT_WRITABLE:
            hint = "the folder is not writable: choose another --out"
        else:
            hint = "check the folder or choose another --out"
        reason = f"[Errno {err.errno}] {err.strerror}" if err.errno is not None else str(err)
        raise OutputWriteError(f"cannot write {what} to {out}: {reason} — {hint}") from err


def write_config(out: Path, config: Mapping[str, Any]) -> None:
    """``OUT/config.yaml``: the resolved config of this invocation (keys in config order); creates OUT."""
    with writes_into(out, "the config"):
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.yaml", yaml.safe_dump(dict(config), sort_keys=False))


def write_data_fingerprints(out: Path, fingerprints: Mapping[str, Mapping[str, Any]]) -> None:
    """``OUT/data.json``: ``{"train": fingerprint, "test": fingerprint}`` of the data this invocation loaded
    (see :func:`lyadeq_zoo.training.data.fingerprint`); checkpoints hold the same in ``state.json["data"]``."""
    with writes_into(out, "the data fingerprint"):
        write_json_atomic(out / "data.json", {split: dict(fp) for split, fp in fingerprints.items()}, sort_keys=True)


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


def save_final(
    model: nn.Module,
    directory: Path,
    final_metrics: Mapping[str, Any] | None,
    dataset: str,
    command: str | None,
    history: list[Mapping[str, Any]],
) -> Path:
    """``OUT/final``: a ``save_pretrained`` folder of ``model`` (put in eval mode) whose card records the final
    metrics (the last epoch's clean test accuracy when the final evaluation did not measure it), the data set,
    the command and the number of epochs. Returns ``directory``."""
    metrics = dict(final_metrics) if final_metrics else {}
    last = _last_epoch(history)
    if "test_acc" in last:
        metrics.setdefault("clean_accuracy", last["test_acc"])
    epochs = last.get("epoch")
    model.eval()
    # DIR/final: the card is named after the run folder (e.g. runs/zoo/lyadeq_mnist), not "final".
    save_pretrained(
        model, directory, metrics=metrics, dataset=dataset, train_command=command, epochs=epochs,
        name=directory.parent.name, training_run=training_run_facts(model, history, command),
    )
    return directory


def training_run_facts(model: nn.Module, history: list[Mapping[str, Any]], command: str | None) -> dict[str, Any]:
    """How the run went, for the card: device (the GPU's name, or ``cpu``), torch threads, the summed epoch times
    in seconds (evaluation excluded), the ``amp`` / ``channels_last`` options, and whether it was resumed."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    train = (getattr(model, "config", None) or {}).get("train") or {}
    epoch_seconds = [float(r.get("epoch_seconds") or 0.0) for r in history if r.get("kind") == "epoch"]
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "wall_seconds": round(sum(epoch_seconds), 1),
        "amp": bool(train.get("amp", False)),
        "channels_last": bool(train.get("channels_last", False)),
        "resumed": bool(command and "--resume" in command.split()),
    }


def _last_epoch(history: list[Mapping[str, Any]]) -> dict[str, Any]:
    epochs = [r for r in history if r.get("kind") == "epoch"]
    return dict(epochs[-1]) if epochs else {}
