"""Atomic, pickle-free training checkpoints.

Layout of one checkpoint (a directory under ``OUT/checkpoints/``, named by the global step)::

    step-000001200/
      model.safetensors       model.state_dict() (weights and buffers)
      optimizer.safetensors   optimizer tensor state, keys "<param index>.<name>" (Adam: step, exp_avg, ...)
      rng.safetensors         per-rank torch RNG states (uint8): "rank<r>.torch_cpu", "rank<r>.cuda"
      state.json              everything else: position (epoch, step_in_epoch, global_step,
                              permutation_seed), optimizer param_groups and non-tensor state, scheduler
                              state, per-rank python/numpy RNG states, metrics history, the resolved
                              config, versions
      manifest.json           format version, and size + sha256 of each file above (written last)

Writing: all files go into a hidden temporary directory, each is flushed and fsync'ed, the manifest is
written last, the directory is fsync'ed and then renamed into place with ``os.replace`` (atomic on POSIX),
and the parent directory is fsync'ed. A crash leaves either the complete checkpoint or a ``.tmp-*``
directory that is ignored and later removed. Loading verifies the manifest (sizes and checksums) and
parses every file; a damaged checkpoint is renamed ``corrupt-*`` and the previous one is used, with a
warning that says so. A checkpoint whose model or optimizer tensors hold a NaN / inf counts as damaged, and
:func:`save_checkpoint` refuses to write one (:class:`~lyadeq_zoo.errors.NonFiniteError`): the training loop
stops before such values reach the weights, so this is the last line of defence. Pruning to ``keep_last``
happens only after a checkpoint was written completely, and never removes the newest one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..errors import CheckpointError, NonFiniteError
from ..fileio import fsync_dir, sha256_file, write_synced
from .finite import nonfinite_counts, nonfinite_tensors

FORMAT = "lyadeq_zoo.train_checkpoint/1"
MANIFEST = "manifest.json"
STATE = "state.json"
TENSOR_FILES = ("model", "optimizer", "rng")
# The tensor files that must hold finite values (rng.safetensors is uint8).
FINITE_FILES = ("model", "optimizer")
_NAME = re.compile(r"^step-(\d{9,})$")


class CheckpointWarning(UserWarning):
    """A checkpoint could not be used as it is: a damaged (or non-finite) one was skipped in favour of an older
    one, or its training data could not be verified."""


# -- (de)flattening optimizer state ------------------------------------------------------------------
def split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` -> (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            key = f"{index}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value
            else:
                scalars[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`split_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for source in (tensors, rest["scalars"]):
        for key, value in source.items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
    groups = []
    for group in rest["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def _cpu_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied weights); contiguous: required.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


# -- checkpoints ------------------------------------------------------------------------------------
def checkpoint_name(global_step: int) -> str:
    """The folder name of the checkpoint taken after ``global_step`` optimizer steps (``step-000001200``)."""
    return f"step-{global_step:09d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete-looking checkpoints under ``root`` (by name), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def first_nonfinite(tensors: dict[str, dict[str, torch.Tensor]]) -> str | None:
    """``"model tensor 'fc1.weight' is not finite (3 NaN, 0 inf of 4096 values; 1 other model tensor too)"``
    for the first model / optimizer tensor holding a NaN or inf, or None when all are finite."""
    for file in FINITE_FILES:
        named = tensors.get(file, {})
        bad = nonfinite_tensors(named)
        if bad:
            more = f"; {len(bad) - 1} other {file} tensor(s) too" if len(bad) > 1 else ""
            return f"{file} tensor {bad[0]!r} is not finite ({nonfinite_counts(named[bad[0]])}{more})"
    return None


def save_checkpoint(
    root: Path, global_step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]
) -> Path:
    """Write one checkpoint atomically; ``tensors`` maps each of :data:`TENSOR_FILES` to a flat dict.

    Raises :class:`~lyadeq_zoo.errors.NonFiniteError` (writing nothing) if a model or optimizer tensor holds a
    NaN / inf. On a write error (disk full ...) the partial temporary folder is removed and the OSError raised;
    the existing checkpoints are untouched either way.
    """
    root = Path(root)
    final = root / checkpoint_name(global_step)
    cpu = {name: _cpu_tensors(tensors.get(name, {})) for name in TENSOR_FILES}
    poisoned = first_nonfinite(cpu)
    if poisoned is not None:
        raise NonFiniteError(
            f"refusing to write checkpoint {final}: its {poisoned}; the checkpoints already in {root} are kept"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name in TENSOR_FILES:
            write_synced(tmp / f"{name}.safetensors", safetensors_bytes(cpu[name], metadata={"format": FORMAT}))
        write_synced(tmp / STATE, json.dumps(state, indent=1, sort_keys=True, allow_nan=True).encode("utf-8"))
        files = {
            path.name: {"bytes": path.stat().st_size, "sha256": sha256_file(path)} for path in sorted(tmp.iterdir())
        }
        manifest = {"format": FORMAT, "global_step": global_step, "files": files}
        write_synced(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # free the space a full disk needs back
        raise
    if final.exists():  # a stale copy (e.g. a run resumed from an older checkpoint): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    return final


def verify_checkpoint(path: Path) -> str | None:
    """None if ``path`` is a complete, intact checkpoint, else a sentence saying what is wrong."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{MANIFEST} is missing (the write did not finish)"
    except (OSError, ValueError) as err:
        return f"{MANIFEST} is unreadable ({err})"
    if manifest.get("format") != FORMAT:
        return f"unknown checkpoint format {manifest.get('format')!r} (expected {FORMAT!r})"
    expected = {f"{n}.safetensors" for n in TENSOR_FILES} | {STATE}
    missing = sorted(expected - set(manifest.get("files", {})))
    if missing:
        return f"the manifest does not list {', '.join(missing)}"
    for name, meta in manifest["files"].items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != meta["bytes"]:
            return f"{name} has {size} bytes, the manifest says {meta['bytes']} (truncated?)"
        if sha256_file(file) != meta["sha256"]:
            return f"{name} does not match its sha256 in the manifest (corrupted)"
    return None


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a verified checkpoint: (tensors per file, state dict). Raises CheckpointError if damaged."""
    path = Path(path)
    problem = verify_checkpoint(path)
    if problem is None:
        try:
            tensors = {name: load_file(str(path / f"{name}.safetensors")) for name in TENSOR_FILES}
            state = json.loads((path / STATE).read_text(encoding="utf-8"))
        except (SafetensorError, OSError, ValueError) as err:
            problem = f"a file does not parse ({type(err).__name__}: {err})"
        else:
            poisoned = first_nonfinite(tensors)
            if poisoned is None:
                return tensors, state
            problem = f"its {poisoned}: written by a run that had diverged"
    raise CheckpointError(f"checkpoint {path} is damaged: {problem}")


def load_latest(root: Path) -> tuple[Path, dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """The newest intact checkpoint under ``root``: (path, tensors, state).

    Damaged ones (newest first; non-finite model / optimizer tensors count as damage) are renamed
    ``corrupt-<name>`` and skipped with a :class:`CheckpointWarning` naming the checkpoint, the problem and the
    one used instead.
    """
    candidates = list_checkpoints(root)
    if not candidates:
        raise CheckpointError(
            f"no checkpoint in {root} to resume from; start without --resume (or check the --out directory)"
        )
    skipped: list[str] = []
    for path in reversed(candidates):
        try:
            tensors, state = load_checkpoint(path)
        except CheckpointError as err:
            skipped.append(str(err))
            aside = path.with_name(f"corrupt-{path.name}")
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(path, aside)
            continue
        if skipped:
            warnings.warn(
                f"{'; '.join(skipped)}. Renamed to corrupt-*; resuming from the previous checkpoint "
                f"{path.name} instead.",
                CheckpointWarning,
                stacklevel=2,
            )
        return path, tensors, state
    raise CheckpointError(f"every checkpoint in {root} is damaged: {'; '.join(skipped)}")


def prune(root: Path, keep_last: int, written: Path) -> None:
    """After checkpoint ``written`` was saved completely: keep the newest ``keep_last`` checkpoints (``written``
    always among them), remove older ones and leftover temporary directories."""
    root = Path(root)
    if not (Path(written) / MANIFEST).is_file():
        raise CheckpointError(f"prune: {written} is not a complete checkpoint; nothing removed")
    keep_last = max(int(keep_last), 1)
    for path in list_checkpoints(root)[:-keep_last]:
        if path != Path(written):
            shutil.rmtree(path, ignore_errors=True)
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(".tmp-") and not path.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(path, ignore_errors=True)
