"""Publishing checkpoints: push one to the Hugging Face Hub, ship a copy in the package, record it in the
pretrained index (``lyadeq_zoo/pretrained.json``).

These steps check a checkpoint by building its model, so they sit above both :mod:`lyadeq_zoo.factory`
(which builds) and :mod:`lyadeq_zoo.hub` (files, index, Hub transfers); ``tools/publish.py`` is their CLI.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import CheckpointError
from .factory import create_model, model_from_checkpoint
from .fileio import sha256_file, write_folder_atomic
from .hub import (
    CHECKPOINT_FILES,
    CONFIG_NAME,
    LOCAL_PREFIX,
    WEIGHTS_NAME,
    index_path,
    load_weights,
    read_checkpoint_config,
    read_index,
    save_pretrained,
    set_entry,
    upload_checkpoint,
)

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo, HfApi


def push_to_hub(
    model_or_dir: torch.nn.Module | str | Path,
    repo_id: str,
    *,
    api: HfApi | None = None,
    revision: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
) -> CommitInfo:
    """Upload a checkpoint folder (or a model, saved first with ``save_pretrained``) to a Hub model repo.

    ``api`` is a ``huggingface_hub.HfApi`` (default: ``HfApi()``, which reads the usual token and
    ``HF_ENDPOINT``). The repo is created if needed (``exist_ok``), a ``revision`` other than ``main`` is
    created as a branch, and only the checkpoint files are uploaded. A folder is loaded strictly first,
    so a broken checkpoint is never published. Returns the commit info (``.oid`` is the commit hash).
    """
    options: dict[str, Any] = {"api": api, "revision": revision, "private": private, "commit_message": commit_message}
    if not isinstance(model_or_dir, torch.nn.Module):
        folder = Path(model_or_dir).expanduser()
        model_from_checkpoint(f"{LOCAL_PREFIX}{folder}")  # strict check before anything leaves the machine
        return upload_checkpoint(folder, repo_id, **options)
    with tempfile.TemporaryDirectory(prefix="lyadeq_zoo_push_") as tmp:
        folder = save_pretrained(model_or_dir, Path(tmp) / "checkpoint", name=repo_id.split("/")[-1])
        return upload_checkpoint(folder, repo_id, **options)


def check_fits_zoo_model(name: str, folder: str | Path) -> None:
    """Raise CheckpointError unless ``folder`` is a checkpoint whose weights load strictly into zoo model
    ``name`` as its zoo config builds it (so the index never points at another architecture's weights)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder (expected a lz.save_pretrained folder)")
    read_checkpoint_config(folder / CONFIG_NAME)
    load_weights(create_model(name), folder / WEIGHTS_NAME)


def ship_checkpoint(name: str, folder: str | Path, ship_root: str | Path) -> Path:
    """Copy the checkpoint files of ``folder`` to ``ship_root/name``, replacing an older copy; returns it.

    The copy is written complete beside the target first, so a failed copy leaves the old one in place.
    """
    folder, ship_root = Path(folder), Path(ship_root)
    files = {file: (folder / file).read_bytes() for file in CHECKPOINT_FILES if (folder / file).is_file()}
    target = ship_root / name
    staging = write_folder_atomic(ship_root / f".{name}.{uuid.uuid4().hex}.tmp", files)
    try:
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def publish_pretrained(
    name: str,
    folder: str | Path,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    ship: bool = False,
    index: str | Path | None = None,
    ship_root: str | Path | None = None,
    api: HfApi | None = None,
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Publish the checkpoint ``folder`` as zoo model ``name``'s pretrained weights; returns the index entry.

    The folder is checked to fit ``name`` first (nothing is pushed or recorded otherwise). With ``repo_id``
    it is pushed and the entry records the commit hash the upload created (not the branch), so a later
    push cannot change what users download; with ``ship`` it is copied to ``ship_root/name`` (default:
    ``pretrained/`` beside the index). A source not refreshed now is dropped from the entry, since it holds
    other weights. ``index`` defaults to the pretrained index in use; ``report`` receives progress lines.
    """
    if not repo_id and not ship:
        raise ValueError("nothing to publish to: give repo_id, ship=True, or both")
    say = report or (lambda line: None)
    folder = Path(folder).expanduser()
    index = Path(index).expanduser() if index is not None else index_path()
    check_fits_zoo_model(name, folder)
    old = read_index(index).get(name, {})
    entry: dict[str, Any] = {
        "filename": WEIGHTS_NAME,
        "sha256": sha256_file(folder / WEIGHTS_NAME),
        "hf_hub_id": old.get("hf_hub_id"),
        "revision": old.get("revision"),
        "local_path": old.get("local_path"),
    }
    if repo_id:
        info = push_to_hub(folder, repo_id, api=api, revision=revision, private=private, commit_message=commit_message)
        entry.update(hf_hub_id=repo_id, revision=info.oid)
        say(f"pushed {folder} to {repo_id} at commit {info.oid}")
    elif entry["hf_hub_id"]:
        say(f"note: dropping the Hub entry {entry['hf_hub_id']} (it holds other weights); push to keep a Hub copy")
        entry.update(hf_hub_id=None, revision=None)
    if ship:
        root = Path(ship_root).expanduser() if ship_root is not None else index.parent / "pretrained"
        target = ship_checkpoint(name, folder, root)
        entry["local_path"] = _relative_to_index(target, index)
        say(f"shipped a copy in {target}")
    elif entry["local_path"]:
        say(f"note: dropping the shipped copy {entry['local_path']} from the entry (it holds other weights)")
        entry["local_path"] = None
    return set_entry(name, entry, index)


def _relative_to_index(folder: Path, index: Path) -> str:
    """``folder`` relative to the index file's folder when it lies below it, else absolute."""
    try:
        return str(folder.resolve().relative_to(index.resolve().parent))
    except ValueError:
        return str(folder.resolve())
